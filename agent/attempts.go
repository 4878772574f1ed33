package agent

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/attempts"
	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/status"
	"github.com/imdsguard/imdsguard/tasknet"
)

// Blocked attempts in the daemon (package attempts): the host's NFLOG
// reader opens with the loop, one more per awsvpc task whose layer-1 table
// exists (NFLOG groups are per namespace), and after every pass the agent
// publishes who owned which bridge port, address, cgroup and task. Bridge
// ports are found off the sync path, once per container, by a resolver of
// its own (an inspect for the pid, then rtnetlink in its namespace).

// LabelTaskRevision is the ECS label of the task definition's revision.
const LabelTaskRevision = "com.amazonaws.ecs.task-definition-version"

type attemptsWiring struct {
	guard *attempts.Guard
	rec   *attempts.Recorder
	audit *attempts.AuditLog
	log   *logrus.Entry

	mu      sync.Mutex
	err     string
	host    *attempts.Reader
	tasks   map[string]*attempts.Reader // by pause container ID
	ports   map[string]map[netip.Addr]docker.BridgePort
	tried   map[string]time.Time // containers the resolver has asked about, when
	last    attempts.Table       // the last published, without resolved ports
	resolve chan []docker.Container
	refresh func()
}

// startAttempts opens the host's reader and starts the consumer and the
// port resolver; they stop with ctx. A reader that cannot open (another
// process bound the group) is an error in the status, never a failed sync.
func (a *Agent) startAttempts(ctx context.Context, wg *sync.WaitGroup) {
	w := &attemptsWiring{log: a.log.WithField("component", "attempts"), tasks: map[string]*attempts.Reader{},
		ports: map[string]map[netip.Addr]docker.BridgePort{}, tried: map[string]time.Time{}, resolve: make(chan []docker.Container, 1)}
	if a.cfg.AuditLog != "" {
		l, err := attempts.OpenAuditLog(a.cfg.AuditLog, 0)
		if err != nil {
			w.err = err.Error()
			w.log.WithError(err).Error("blocked attempts: no audit log")
		} else {
			w.audit = l
		}
	}
	w.rec = attempts.NewRecorder(w.log, w.audit)
	a.pub.AddCollector(w.rec)
	w.guard = attempts.NewGuard(w.rec, portName)
	w.refresh = throttle(time.Second, a.refreshAttempts)
	if r, err := attempts.Open(0, "", w.guard); err != nil {
		w.err = err.Error()
		w.log.WithError(err).Error("blocked attempts will not be attributed")
	} else {
		w.host = r
	}
	a.mu.Lock()
	a.att = w
	a.mu.Unlock()
	wg.Add(3)
	go func() {
		defer wg.Done()
		w.guard.Run(ctx)
		w.closeAll()
	}()
	go func() {
		defer wg.Done()
		a.resolvePorts(ctx, w)
	}()
	go func() { // status follows attempts, at most once a second
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		var seen uint64
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if st := w.rec.Snapshot(); st.Total+st.Lost != seen {
					seen = st.Total + st.Lost
					w.refresh()
				}
			}
		}
	}()
}

func portName(ifindex int) string {
	if i, err := net.InterfaceByIndex(ifindex); err == nil {
		return i.Name
	}
	return ""
}

func (w *attemptsWiring) closeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.host != nil {
		w.host.Close()
		w.host = nil
	}
	for id, r := range w.tasks {
		r.Close()
		delete(w.tasks, id)
	}
	if w.audit != nil {
		w.audit.Close()
	}
}

// attemptsOf is the wiring, nil outside the daemon.
func (a *Agent) attemptsOf() *attemptsWiring {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.att
}

// openTaskAttempts starts reading a task's NFLOG group in its namespace
// (path), beside its layer-1 table.
func (a *Agent) openTaskAttempts(pauseID, path string) {
	w := a.attemptsOf()
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tasks[pauseID] != nil {
		return
	}
	r, err := tasknet.OpenAttempts(path, pauseID, w.guard)
	if err != nil {
		w.log.WithError(err).WithField("task", docker.Short(pauseID)).Warn("blocked attempts: no reader in the task's namespace")
		return
	}
	w.tasks[pauseID] = r
}

// closeTaskAttempts stops a gone task's reader.
func (a *Agent) closeTaskAttempts(pauseID string) {
	w := a.attemptsOf()
	if w == nil {
		return
	}
	w.mu.Lock()
	r := w.tasks[pauseID]
	delete(w.tasks, pauseID)
	w.mu.Unlock()
	if r != nil {
		r.Close()
	}
}

// publishOwners hands the attempt pipeline who owned what in this pass.
func (a *Agent) publishOwners(containers []docker.Container, listed bool) {
	w := a.attemptsOf()
	if w == nil || !listed {
		return
	}
	a.mu.Lock()
	cg := make(map[string]hostCgroup, len(a.hostCgroups))
	for id, h := range a.hostCgroups {
		cg[id] = h
	}
	a.mu.Unlock()
	t := ownerTable(containers, cg)
	w.mu.Lock()
	w.last = t
	w.mu.Unlock()
	w.publish()
	select {
	case w.resolve <- containers:
	default: // the resolver is busy; the next pass hands it the list again
		select {
		case <-w.resolve:
		default:
		}
		select {
		case w.resolve <- containers:
		default:
		}
	}
}

// publish adds the ports found so far to the last table and publishes it.
func (w *attemptsWiring) publish() {
	w.mu.Lock()
	t := w.last
	t.Ports = map[string]attempts.Owner{}
	addrs := make(map[netip.Addr]attempts.Owner, len(t.Addrs))
	for ad, o := range t.Addrs {
		if ps, ok := w.ports[o.ContainerID]; ok {
			if p, ok := ps[ad]; ok {
				o.Port = p.Name
				t.Ports[p.Name] = o
			}
		}
		addrs[ad] = o
	}
	t.Addrs = addrs
	w.mu.Unlock()
	w.guard.Publish(t)
}

// ownerTable is who owned what, from one listing and the host-network
// cgroups of the same pass.
func ownerTable(containers []docker.Container, cgroups map[string]hostCgroup) attempts.Table {
	t := attempts.Table{Addrs: map[netip.Addr]attempts.Owner{}, Cgroups: map[uint64]attempts.Owner{}, Tasks: map[string]attempts.Owner{}}
	ix := docker.NewIndex(containers)
	members := map[string][]docker.Container{}
	for _, c := range containers {
		if o, ok := ix.Owner(c); ok && o.ID != c.ID {
			if class, _ := docker.ModeClass(o); class == docker.ModeAWSVPC {
				members[o.ID] = append(members[o.ID], c)
			}
		}
	}
	for _, c := range containers {
		class, _ := docker.ModeClass(c)
		o := ownerOf(c, class)
		switch class {
		case docker.ModeBridge, docker.ModeUserNet:
			for _, ad := range append(append([]netip.Addr{}, c.IPv4...), c.IPv6...) {
				t.Addrs[ad.Unmap()] = o
			}
		case docker.ModeAWSVPC:
			// The task's namespace is shared by its containers: the one
			// container besides the pause is named, several are listed.
			var names, ecsNames, images []string
			for _, m := range members[c.ID] {
				names, ecsNames, images = append(names, m.Name), append(ecsNames, m.Labels[docker.LabelContainerName]), append(images, m.Image)
			}
			if len(names) > 0 {
				o.Name, o.ECSContainer, o.Image = strings.Join(names, ","), strings.Join(ecsNames, ","), strings.Join(images, ",")
				if len(members[c.ID]) == 1 {
					o.ContainerID = members[c.ID][0].ID
				}
			}
			t.Tasks[c.ID] = o
		}
		if h, ok := cgroups[c.ID]; ok {
			t.Cgroups[h.id] = o
		}
	}
	return t
}

func ownerOf(c docker.Container, class string) attempts.Owner {
	return attempts.Owner{ContainerID: c.ID, Name: c.Name, Image: c.Image, NetworkMode: class,
		TaskARN: c.Labels[docker.LabelTaskARN], TaskFamily: c.Labels[docker.LabelTaskFamily],
		TaskRevision: c.Labels[LabelTaskRevision], ECSContainer: c.Labels[docker.LabelContainerName]}
}

// resolvePorts finds each bridged container's bridge ports once, outside
// the sync: its pid by an inspect, then its veths' peers.
func (a *Agent) resolvePorts(ctx context.Context, w *attemptsWiring) {
	insp, _ := a.source.(docker.Inspector)
	var finder docker.PortFinder
	if a.lister != nil {
		finder = a.lister.Ports
	}
	for {
		var cs []docker.Container
		select {
		case <-ctx.Done():
			return
		case cs = <-w.resolve:
		}
		found := false
		live := map[string]bool{}
		// Listed only when a container with known ports is met.
		links := sync.OnceValue(hostLinks)
		for _, c := range cs {
			live[c.ID] = true
			class, _ := docker.ModeClass(c)
			if class != docker.ModeBridge && class != docker.ModeUserNet {
				continue
			}
			w.mu.Lock()
			known, triedAt := w.ports[c.ID], w.tried[c.ID]
			w.mu.Unlock()
			// A try that found nothing (an inspect dockerd refused while
			// starting, a veth not there yet) is tried again, not never.
			tried := !triedAt.IsZero() && time.Since(triedAt) < portRetry
			if known != nil && portsGone(known, links()) {
				// Started again under the same ID (a restart policy, a
				// dockerd restart, docker restart): new veths, found again.
				w.mu.Lock()
				delete(w.ports, c.ID)
				w.mu.Unlock()
				known, tried, found = nil, false, true
			}
			if known != nil || tried {
				continue
			}
			ports := c.Ports
			if len(ports) == 0 && insp != nil && finder != nil {
				det, err := insp.Inspect(ctx, c.ID)
				if err == nil {
					ports, _ = finder.Ports(det.Pid)
				}
			}
			w.mu.Lock()
			w.tried[c.ID] = time.Now()
			if len(ports) > 0 {
				w.ports[c.ID] = ports
				found = true
			}
			w.mu.Unlock()
		}
		w.mu.Lock()
		for id := range w.tried {
			if !live[id] {
				delete(w.tried, id)
				delete(w.ports, id)
			}
		}
		w.mu.Unlock()
		if found {
			w.publish()
		}
	}
}

// portRetry is how long a container whose bridge ports could not be found
// waits for the resolver's next try.
const portRetry = 10 * time.Second

// hostLinks names the host namespace's interfaces; nil when they cannot
// be listed (then no port is taken for gone).
func hostLinks() map[string]bool {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	names := make(map[string]bool, len(ifs))
	for _, i := range ifs {
		names[i.Name] = true
	}
	return names
}

// portsGone reports whether none of a container's bridge ports is among
// links any more (nil links: unknown, so not gone).
func portsGone(ports map[netip.Addr]docker.BridgePort, links map[string]bool) bool {
	if links == nil {
		return false
	}
	for _, p := range ports {
		if links[p.Name] {
			return false
		}
	}
	return len(ports) > 0
}

// refreshAttempts puts the recorder's last attempts into the published
// status between syncs.
func (a *Agent) refreshAttempts() { a.pub.Update(a.fillAttempts) }

// fillAttempts sets the status's attempt fields.
func (a *Agent) fillAttempts(st *status.Status) {
	w := a.attemptsOf()
	if w == nil {
		return
	}
	snap := w.rec.Snapshot()
	w.mu.Lock()
	as := &status.AttemptsStatus{Total: snap.Total, Lost: snap.Lost, Error: w.err, AuditLog: a.cfg.AuditLog, AuditErr: snap.AuditErr}
	w.mu.Unlock()
	st.Attempts, st.BlockedAttempts = as, snap.Last
	if st.BlockedAttempts == nil {
		st.BlockedAttempts = []attempts.Attempt{}
	}
}
