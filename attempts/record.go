package attempts

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
)

// Bounds of what the recorder keeps. MaxLabelSets caps the metric's label
// sets {task_family, container_name, family}; attempts of any further set
// count under task_family="other", container_name="other".
const (
	RingSize     = 128
	MaxLabelSets = 200
	maxSeen      = 10000
	// Interval is how often a container's attempts are summed up in one
	// warning.
	Interval = 10 * time.Second
	other    = "other"
)

// Recorder turns attempts into a log, a metric, a ring for status and an
// audit log.
type Recorder struct {
	log      *logrus.Entry
	audit    *AuditLog // nil: none
	interval time.Duration

	mu       sync.Mutex
	ring     []Attempt // oldest first
	total    uint64
	lostN    uint64
	agg      map[string]*aggregate
	seen     map[string]bool // containers whose first attempt was logged
	labels   map[[3]string]bool
	last     time.Time
	counter  *prometheus.CounterVec
	lostCtr  prometheus.Counter
	auditErr string
}

type aggregate struct {
	first Attempt
	n     int
	dsts  map[string]bool
}

// NewRecorder writes to audit (nil: no audit log). It is the Collector of
// its metrics.
func NewRecorder(log *logrus.Entry, audit *AuditLog) *Recorder {
	r := &Recorder{log: log, audit: audit, interval: Interval, agg: map[string]*aggregate{}, seen: map[string]bool{},
		labels: map[[3]string]bool{}, last: time.Now()}
	r.counter = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imdsguard_blocked_attempts_total",
		Help: fmt.Sprintf("Packets to IMDS blocked and logged by imdsguard's nftables tables, by ECS task family (or %q), container name and family; at most %d label sets, then task_family and container_name %q.", "", MaxLabelSets, other)},
		[]string{"task_family", "container_name", "family"})
	r.lostCtr = prometheus.NewCounter(prometheus.CounterOpts{Name: "imdsguard_attempt_events_lost_total",
		Help: "Blocked-attempt events that were not recorded: the queue was full, the netlink socket's buffer overflowed (a gap in the kernel's sequence numbers) or a message could not be read. Packets over the kernel's rate limit are blocked but never logged, and not counted here."})
	return r
}

// Describe and Collect make the recorder a prometheus.Collector of
// imdsguard_blocked_attempts_total and imdsguard_attempt_events_lost_total.
func (r *Recorder) Describe(ch chan<- *prometheus.Desc) {
	r.counter.Describe(ch)
	r.lostCtr.Describe(ch)
}

func (r *Recorder) Collect(ch chan<- prometheus.Metric) {
	r.counter.Collect(ch)
	r.lostCtr.Collect(ch)
}

func (r *Recorder) lost(n uint64) {
	r.mu.Lock()
	r.lostN += n
	r.mu.Unlock()
	r.lostCtr.Add(float64(n))
}

// labelsOf is the metric's label set: the ECS task family and container
// name, or for a container outside ECS "" and its Docker name.
func labelsOf(a Attempt) [3]string {
	fam := a.Family
	if fam == "" {
		fam = "unknown"
	}
	switch {
	case !a.Attributed:
		return [3]string{"", "", fam}
	case a.TaskFamily != "":
		name := a.ECSContainer
		if name == "" {
			name = a.Name
		}
		return [3]string{a.TaskFamily, name, fam}
	}
	return [3]string{"", a.Name, fam}
}

func (r *Recorder) record(a Attempt) {
	r.mu.Lock()
	r.total++
	r.ring = append(r.ring, a)
	if len(r.ring) > RingSize {
		r.ring = slices.Delete(r.ring, 0, len(r.ring)-RingSize)
	}
	l := labelsOf(a)
	if !r.labels[l] {
		if len(r.labels) >= MaxLabelSets {
			l = [3]string{other, other, l[2]}
		}
		r.labels[l] = true
	}
	key := a.Key()
	first := a.Attributed && !r.seen[key]
	if first {
		if len(r.seen) >= maxSeen {
			clear(r.seen)
		}
		r.seen[key] = true
	}
	if !first { // the first is logged at once; the interval's line counts the rest
		g := r.agg[key]
		if g == nil {
			g = &aggregate{first: a, dsts: map[string]bool{}}
			r.agg[key] = g
		}
		g.n++
		g.dsts[dest(a)] = true
	}
	audit := r.audit
	r.mu.Unlock()
	r.counter.WithLabelValues(l[0], l[1], l[2]).Inc()
	if first {
		r.warn(a, 1, []string{dest(a)}, "first")
	}
	if audit != nil {
		err := audit.Write(a)
		r.mu.Lock()
		if err != nil {
			r.auditErr = err.Error()
		} else {
			r.auditErr = ""
		}
		r.mu.Unlock()
	}
}

func dest(a Attempt) string {
	d := a.Dst
	if strings.Contains(d, ":") {
		d = "[" + d + "]"
	}
	if a.DstPort != 0 {
		return fmt.Sprintf("%s:%d", d, a.DstPort)
	}
	if a.Proto != "" {
		return d + " (" + a.Proto + ")"
	}
	return d
}

// Describe says who an attempt came from, for the log line.
func (a Attempt) Describe() string {
	if !a.Attributed {
		return fmt.Sprintf("unknown source %s (%s)", a.Src, a.By)
	}
	img := ""
	if a.Image != "" {
		img = ", image " + a.Image
	}
	if a.TaskARN != "" {
		fam := a.TaskFamily
		if a.TaskRevision != "" {
			fam += ":" + a.TaskRevision
		}
		name := a.ECSContainer
		if name == "" {
			name = a.Name
		}
		return fmt.Sprintf("task %s (family %s, container %s%s)", a.TaskARN, fam, name, img)
	}
	return fmt.Sprintf("container %s (%s%s)", a.Name, short(a.ContainerID), img)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (r *Recorder) warn(a Attempt, n int, dsts []string, what string) {
	slices.Sort(dsts)
	fields := logrus.Fields{"attempts": n, "container_id": short(a.ContainerID), "container": a.Name,
		"destination": strings.Join(dsts, ","), "family": a.Family, "protocol": a.Proto, "by": a.By}
	if a.TaskARN != "" {
		fields["task_arn"], fields["task_family"], fields["task_revision"], fields["ecs_container"] = a.TaskARN, a.TaskFamily, a.TaskRevision, a.ECSContainer
	}
	if a.Image != "" {
		fields["image"] = a.Image
	}
	if a.Token != nil {
		fields["imdsv2_token_request"] = *a.Token
	}
	if what != "" {
		r.log.WithFields(fields).Warnf("blocked the %s attempt from %s to %s", what, a.Describe(), strings.Join(dsts, ", "))
		return
	}
	r.log.WithFields(fields).Warnf("blocked %d attempts from %s to %s in the last %s", n, a.Describe(), strings.Join(dsts, ", "), seconds(r.interval))
}

func seconds(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%d s", d/time.Second)
	}
	return d.String()
}

// maybeFlush logs the interval's lines once it has passed.
func (r *Recorder) maybeFlush(now time.Time) {
	r.mu.Lock()
	due := now.Sub(r.last) >= r.interval
	r.mu.Unlock()
	if due {
		r.flush(now)
	}
}

// flush logs one line per container that had attempts since the last.
func (r *Recorder) flush(now time.Time) {
	r.mu.Lock()
	agg := r.agg
	r.agg, r.last = map[string]*aggregate{}, now
	r.mu.Unlock()
	for _, k := range slices.Sorted(maps.Keys(agg)) {
		g := agg[k]
		r.warn(g.first, g.n, slices.Collect(maps.Keys(g.dsts)), "")
	}
}

// prune forgets first-seen marks of containers t no longer holds, so a
// restarted container's first attempt is logged at once again.
func (r *Recorder) prune(t *Table) {
	live := map[string]bool{}
	for _, m := range []map[string]Owner{t.Ports, t.Tasks} {
		for _, o := range m {
			live[o.ContainerID] = true
		}
	}
	for _, o := range t.Addrs {
		live[o.ContainerID] = true
	}
	for _, o := range t.Cgroups {
		live[o.ContainerID] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	maps.DeleteFunc(r.seen, func(k string, _ bool) bool { return !live[k] })
}

// Status is the recorder's part of `imdsguard status`.
type Status struct {
	Total    uint64    `json:"total"`
	Lost     uint64    `json:"events_lost"`
	Last     []Attempt `json:"-"`
	AuditErr string    `json:"audit_log_error,omitempty"`
}

// Snapshot returns the counts and the last attempts, newest first.
func (r *Recorder) Snapshot() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	last := slices.Clone(r.ring)
	slices.Reverse(last)
	return Status{Total: r.total, Lost: r.lostN, Last: last, AuditErr: r.auditErr}
}
