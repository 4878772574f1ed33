package e2e

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// TestSoak is the chaos soak: for IMDSGUARD_SOAK (default 40s; `make soak`
// runs minutes) it does, in random order with random gaps, every drift
// kind, dockerd restarts, SIGKILLs of the agent (a supervisor loop starts
// it again), firewalld reloads, complete reloads and restarts, container
// starts and removals (bridge, user-defined, exempt, awsvpc tasks) and
// ecs.config rewrites. Meanwhile a prober container asks IMDS every 10 ms
// and the ruleset is snapshotted every 50 ms. It fails on any of
// imdsguard's rules seen doubled (Docker's own FORWARD jump doubled is
// counted apart), leftovers at the end, a restart not enforced again within
// 30 s, and (runs of 10 minutes or more, whose last 40 % has no SIGKILL so
// one agent lives through the rest) agent RSS growth of 2 MiB or more
// after its first minute (its memory is reported once a minute);
// answered probes are reported per cause. IMDSGUARD_SOAK_OUT names a
// results file (Markdown). Docker: the last of the matrix's versions.
func TestSoak(t *testing.T) {
	dur := 40 * time.Second
	if v := os.Getenv("IMDSGUARD_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("IMDSGUARD_SOAK: %v", err)
		}
		dur = d
	}
	versions, _ := dockerVersions()
	version := versions[len(versions)-1]
	root, err := sandbox.DockerRoot(version)
	if err != nil {
		t.Fatal(err)
	}
	_, fwErr := os.Stat("/etc/firewalld")
	// firewalld's default (nftables) backend, as Debian, RHEL 9 and
	// Amazon Linux 2023 ship it; IMDSGUARD_SOAK_FIREWALLD=iptables for the
	// backend whose reload flushes every table.
	opts := sandbox.Options{DockerRoot: root, Firewalld: fwErr == nil, FirewalldBackend: os.Getenv("IMDSGUARD_SOAK_FIREWALLD")}
	so := &soak{t: t, e: newEnv(t, opts), firewalld: opts.Firewalld, version: version, dur: dur, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 14))}
	so.run()
}

type soakEvent struct {
	kind  string
	start float64 // host uptime, seconds: the prober's clock too
}

type incarnation struct {
	p                *sandbox.Process
	pid              int
	started          time.Time
	rssFirst, rssEnd int64 // kB; 10 s after its start, last sample
	firstAt, endAt   time.Time
	rssMinute        int64 // kB; a minute after its start (warmed up)
	minuteAt         time.Time
	mem              []memPoint // once a minute of its age
}

// lastIncarnationPhase reports whether the chaos, at elapsed, is in the
// final 40 % of a run of 10 minutes or more, where the agent is no longer
// SIGKILLed: one incarnation then lives through minutes of every other
// event, so its RSS says whether the agent grows (a SIGKILL about once a
// minute would otherwise reset it long before a leak shows).
func (so *soak) lastIncarnationPhase(elapsed time.Duration) bool {
	return so.dur >= 10*time.Minute && elapsed >= so.dur*6/10
}

type soak struct {
	t         *testing.T
	e         *env
	firewalld bool
	version   string
	dur       time.Duration
	rng       *rand.Rand

	mu       sync.Mutex
	events   []soakEvent
	agents   []*incarnation
	restarts map[string][]time.Duration // kind -> time to verified enforcement

	snaps, unprotected  int
	firstSnap, lastSnap float64
	unprotectedBy       map[string]int
	dupSnaps            map[string]int // duplicate of imdsguard's -> snapshots showing it
	dockerDupSnaps      map[string]int // Docker's FORWARD jump doubled -> snapshots showing it
	dupBad              []string

	fwFailed int

	pool    []string // soak containers, in start order
	seq     int
	tasks   int
	configN int
}

func uptime() float64 {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func (so *soak) mark(kind string) {
	so.mu.Lock()
	so.events = append(so.events, soakEvent{kind, uptime()})
	so.mu.Unlock()
}

// causeAt is the kind of the last event started at or before u.
func (so *soak) causeAt(u float64) string {
	so.mu.Lock()
	defer so.mu.Unlock()
	cause := "before the chaos"
	for _, ev := range so.events {
		if ev.start > u {
			break
		}
		cause = ev.kind
	}
	return cause
}

func (so *soak) run() {
	t, e, s := so.t, so.e, so.e.s
	so.restarts = map[string][]time.Duration{}
	so.unprotectedBy = map[string]int{}
	so.dupSnaps, so.dockerDupSnaps = map[string]int{}, map[string]int{}
	if err := s.CreateNetwork("soaknet", "172.30.9.0/24", "fd00:ec2:d9::/64"); err != nil {
		t.Fatal(err)
	}
	so.mark("before the first enforcement")
	if _, err := s.Docker("run", "-d", "--init", "--restart", "always", "--name", "prober", sandbox.Image, "sh", "-c", soakProbeScript); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		so.mu.Lock()
		defer so.mu.Unlock()
		for _, a := range so.agents[max(0, len(so.agents)-2):] {
			t.Logf("agent pid %d log (tail):\n%s", a.pid, tailLines(a.p.Log(), 30))
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); so.supervise(ctx) }()
	go func() { defer wg.Done(); so.sampleRSS(ctx) }()
	go func() { defer wg.Done(); so.snapshot(ctx) }()
	start := time.Now()
	so.waitEnforced("first start", start)
	so.mark("enforced, before the first event")

	type action struct {
		name string
		do   func()
	}
	actions := []action{
		{"drift", so.drift},
		{"dockerd restart", func() {
			so.mark("dockerd restart")
			if err := s.RestartDockerd(context.Background()); err != nil {
				t.Fatal(err)
			}
			// Timed from dockerd answering again.
			so.waitEnforced("dockerd restart", time.Now())
			// Containers do not survive a dockerd restart (no live-restore);
			// the prober comes back by its restart policy.
			for _, c := range so.pool {
				_, _ = s.Docker("rm", "-f", c)
			}
			so.pool = nil
		}},
		{"agent SIGKILL", func() {
			so.mark("agent SIGKILL")
			at := time.Now()
			so.mu.Lock()
			cur := so.agents[len(so.agents)-1]
			so.mu.Unlock()
			_ = syscall.Kill(cur.pid, syscall.SIGKILL)
			so.waitEnforced("agent SIGKILL", at)
		}},
		{"container start", so.containerStart},
		{"container remove", so.containerRemove},
		{"ecs.config rewritten", func() {
			so.mark("ecs.config rewritten")
			so.configN++
			cfg := fmt.Sprintf("ECS_CLUSTER=soak-%d\nECS_AWSVPC_BLOCK_IMDS=true\nECS_ENABLE_TASK_IAM_ROLE=true\n", so.configN)
			if err := os.WriteFile(filepath.Join(e.hostRoot, "etc/ecs/ecs.config"), []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	}
	if so.firewalld {
		for _, op := range []string{"--reload", "--complete-reload"} {
			actions = append(actions, action{"firewall-cmd " + op, func() {
				so.mark("firewall-cmd " + op)
				at := time.Now()
				if _, err := s.FirewallCmd(op); err != nil {
					// firewalld's own failures (e.g. its ebtables-restore
					// racing its restart) are chaos too: count them.
					t.Logf("firewall-cmd %s: %v", op, err)
					so.mu.Lock()
					so.fwFailed++
					so.mu.Unlock()
				}
				so.waitEnforced("firewall-cmd "+op, at)
			}})
		}
		actions = append(actions, action{"firewalld restart", func() {
			so.mark("firewalld restart")
			at := time.Now()
			if err := s.RestartFirewalld(context.Background()); err != nil {
				t.Errorf("firewalld restart: %v", err)
				so.mu.Lock()
				so.fwFailed++
				so.mu.Unlock()
				return
			}
			so.waitEnforced("firewalld restart", at)
		}})
	}
	done := map[string]int{}
	for time.Since(start) < so.dur {
		a := actions[so.rng.IntN(len(actions))]
		if a.name == "agent SIGKILL" && so.lastIncarnationPhase(time.Since(start)) {
			continue
		}
		a.do()
		done[a.name]++
		time.Sleep(time.Duration(500+so.rng.IntN(2500)) * time.Millisecond)
	}
	so.mark("end of the chaos")
	// Leftovers: with only the prober left, IMDS-GUARD must be the plain
	// block again, once per family, and everything exactly once.
	for _, c := range so.pool {
		_, _ = s.Docker("rm", "-f", c)
	}
	so.pool = nil
	so.waitEnforced("end", time.Now())
	var left string
	deadline := time.Now().Add(30 * time.Second)
	for left = so.leftovers(); left != "" && time.Now().Before(deadline); left = so.leftovers() {
		time.Sleep(100 * time.Millisecond)
	}
	if left != "" {
		t.Errorf("leftovers at the end: %s", left)
	}
	cancel()
	wg.Wait()
	probes, err := s.Docker("logs", "prober")
	if err != nil {
		t.Fatal(err)
	}
	so.report(time.Since(start), done, probes)
}

// soakProbeScript: every 10 ms a background HTTP GET for instance-id;
// answered probes print "A <uptime>", every 100 issued "I".
var soakProbeScript = fmt.Sprintf(`printf 'GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: %[1]s\r\n\r\n' > /tmp/req
i=0
while :; do
  ( nc -w 1 %[1]s 80 < /tmp/req 2>/dev/null | grep -q %[2]s && read u x < /proc/uptime && echo "A $u" ) &
  usleep 10000
  i=$((i+1))
  if [ $((i %% 100)) -eq 0 ]; then echo I; fi
done`, sandbox.IMDSv4, sandbox.InstanceID)

func (so *soak) drift() {
	d := drifts[so.rng.IntN(len(drifts))]
	so.mark("drift: " + d.name)
	if _, err := so.e.s.HostRun("sh", "-c", d.script); err != nil {
		so.t.Logf("drift %s: %v", d.name, err) // e.g. a chain a reload just took away
	}
}

func (so *soak) containerStart() {
	s := so.e.s
	so.seq++
	name := fmt.Sprintf("c%d", so.seq)
	var args []string
	kind := []string{"bridge", "user-defined", "exempt", "awsvpc task"}[so.rng.IntN(4)]
	if kind == "awsvpc task" && so.tasks >= 60 {
		kind = "bridge"
	}
	so.mark("container start: " + kind)
	switch kind {
	case "user-defined":
		args = []string{"--network", "soaknet"}
	case "exempt":
		args = []string{"--network", "soaknet", "--label", agent.ExampleExemptLabel}
	case "awsvpc task":
		so.tasks++
		task := newSimTask(so.t, s, name, so.tasks, so.rng.IntN(2) == 0)
		so.pool = append(so.pool, task.pause)
		return
	}
	if _, err := s.RunContainer(name, args...); err != nil {
		so.t.Fatal(err)
	}
	so.pool = append(so.pool, name)
}

func (so *soak) containerRemove() {
	if len(so.pool) == 0 {
		so.containerStart()
		return
	}
	so.mark("container remove")
	i := so.rng.IntN(len(so.pool))
	if _, err := so.e.s.Docker("rm", "-f", so.pool[i]); err != nil {
		so.t.Fatal(err)
	}
	so.pool = slices.Delete(so.pool, i, i+1)
}

// supervise starts the agent and starts it again whenever it exits, as
// systemd's Restart=always would.
func (so *soak) supervise(ctx context.Context) {
	for n := 1; ctx.Err() == nil; n++ {
		args := append([]string{"run"}, so.e.flags()...)
		args = append(args, "--log-format", "json", "--log-level", "info", "--resync-interval", "5s", "--exempt-label", agent.ExampleExemptLabel,
			// The soak's tasks get no blackhole from a CNI plugin: in check
			// mode each would be (truly) exposed and no event after its start
			// could reach protected. Enforce mode blocks them, as an operator
			// who runs awsvpc tasks would configure.
			"--awsvpc-mode", "enforce")
		p, err := so.e.s.StartProcess(fmt.Sprintf("imdsguard-%d", n), agentBin, args...)
		if err != nil {
			so.t.Errorf("starting the agent: %v", err)
			return
		}
		so.mu.Lock()
		so.agents = append(so.agents, &incarnation{p: p, pid: p.Pid(), started: time.Now()})
		so.mu.Unlock()
		select {
		case <-p.Done():
		case <-ctx.Done():
			_ = p.Stop(10 * time.Second)
			return
		}
	}
}

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func (so *soak) sampleRSS(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		so.mu.Lock()
		var cur *incarnation
		if len(so.agents) > 0 {
			cur = so.agents[len(so.agents)-1]
		}
		due := cur != nil && time.Since(cur.started) >= time.Duration(len(cur.mem)+1)*time.Minute
		so.mu.Unlock()
		if due { // outside the lock: an HTTP request to the agent
			p := memPoint{age: time.Since(cur.started), rss: rssKB(cur.pid)}
			heap, err := heapInuseKB(so.e.socket)
			if err != nil {
				so.t.Logf("agent heap at %v: %v", p.age.Round(time.Second), err)
			}
			p.heapKB = heap
			so.mu.Lock()
			cur.mem = append(cur.mem, p)
			so.mu.Unlock()
		}
		so.mu.Lock()
		if cur != nil {
			if kb := rssKB(cur.pid); kb > 0 {
				if cur.rssFirst == 0 && time.Since(cur.started) > 10*time.Second {
					cur.rssFirst, cur.firstAt = kb, time.Now()
				}
				if cur.rssMinute == 0 && time.Since(cur.started) > time.Minute {
					cur.rssMinute, cur.minuteAt = kb, time.Now()
				}
				if cur.rssFirst != 0 {
					cur.rssEnd, cur.endAt = kb, time.Now()
				}
			}
		}
		so.mu.Unlock()
	}
}

// snapshot reads both families' filter tables every 50 ms with one
// long-running shell in the host namespace (from the Docker root: the same
// iptables as dockerd and the agent).
func (so *soak) snapshot(ctx context.Context) {
	script := `while :; do read u x < /proc/uptime; echo "T $u"; iptables-save -t filter; echo "V6"; ip6tables-save -t filter; echo "END"; busybox usleep 50000; done`
	cmd := so.e.s.HostCommand(ctx, "sh", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		so.t.Errorf("snapshots: %v", err)
		return
	}
	if err := cmd.Start(); err != nil {
		so.t.Errorf("snapshots: %v", err)
		return
	}
	defer func() { _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var v4, v6 strings.Builder
	cur := &v4
	var at float64
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "T "):
			at, _ = strconv.ParseFloat(l[2:], 64)
			v4.Reset()
			v6.Reset()
			cur = &v4
		case l == "V6":
			cur = &v6
		case l == "END":
			so.judge(at, v4.String(), v6.String())
		default:
			cur.WriteString(l + "\n")
		}
	}
}

func (so *soak) judge(at float64, v4, v6 string) {
	cause := so.causeAt(at)
	so.mu.Lock()
	defer so.mu.Unlock()
	so.snaps++
	if !protectedIn(v4, "ipv4") || !protectedIn(v6, "ipv6") {
		so.unprotected++
		so.unprotectedBy[cause]++
	}
	for fam, out := range map[string]string{"ipv4": v4, "ipv6": v6} {
		// Only duplicates count here: a missing rule is drift, judged above.
		for _, p := range strings.Split(census(out), "; ") {
			if !strings.Contains(p, "×") {
				continue
			}
			key := fam + " " + p
			// imdsguard writes none of Docker's rules, so Docker's FORWARD
			// jump doubled is Docker's doing (or a leftover of an earlier
			// imdsguard): counted apart, never expected. Any rule of
			// imdsguard's doubled is a failure.
			if isDockerJump(p) {
				so.dockerDupSnaps[key]++
				continue
			}
			so.dupSnaps[key]++
			if len(so.dupBad) < 20 {
				so.dupBad = append(so.dupBad, fmt.Sprintf("%.2f %s (after %s)", at, key, cause))
			}
		}
	}
	if so.firstSnap == 0 {
		so.firstSnap = at
	}
	so.lastSnap = at
}

// waitEnforced waits for the agent to report protected from a sync begun
// after at, and records the time since at under kind. The 30 s limit runs
// from the call: what the event itself took (a dockerd restart) is not
// the agent's.
func (so *soak) waitEnforced(kind string, at time.Time) {
	deadline := time.Now().Add(30 * time.Second)
	var last *status.Status
	for {
		st, err := status.QueryStatus(context.Background(), so.e.socket)
		if err == nil {
			last = st
		}
		if err == nil && st.Verdict == status.VerdictProtected && st.LastSync != nil && st.LastSync.At.After(at) {
			so.mu.Lock()
			so.restarts[kind] = append(so.restarts[kind], time.Since(at))
			so.mu.Unlock()
			return
		}
		if time.Now().After(deadline) {
			// Not fatal: the soak goes on, and the report shows it.
			so.t.Errorf("%s: not enforced again within 30 s (status err %v; last status read: %s)", kind, err, statusLine(last))
			so.mu.Lock()
			so.restarts[kind+" (NOT enforced within 30 s)"] = append(so.restarts[kind+" (NOT enforced within 30 s)"], time.Since(at))
			so.mu.Unlock()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// statusLine says why a status is not the verified protection waitEnforced
// waits for: its verdict, reasons and last sync.
func statusLine(st *status.Status) string {
	if st == nil {
		return "none"
	}
	line := fmt.Sprintf("%s %q", st.Verdict, st.Reasons)
	if ls := st.LastSync; ls != nil {
		line += fmt.Sprintf(", last sync %s ok=%v %s", ls.At.Format(time.RFC3339Nano), ls.OK, ls.Error)
	}
	return line
}

// isDockerJump: a census entry about Docker's FORWARD jump to DOCKER-USER.
func isDockerJump(p string) bool { return strings.HasSuffix(p, `"-A FORWARD -j DOCKER-USER"`) }

// leftovers: exactly one of each rule per family, and IMDS-GUARD holds
// nothing but the block (no ACCEPT for an exempt container that is gone).
func (so *soak) leftovers() string {
	var bad []string
	for fam, bin := range map[string]string{"ipv4": "iptables-save", "ipv6": "ip6tables-save"} {
		out, err := so.e.s.HostRun(bin, "-t", "filter")
		if err != nil {
			return err.Error()
		}
		for _, p := range strings.Split(census(out), "; ") {
			if p != "" && !isDockerJump(p) { // Docker's: counted by judge
				bad = append(bad, fam+": "+p)
			}
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "-A IMDS-GUARD ") && !strings.HasSuffix(l, "-j DROP") {
				bad = append(bad, fam+": leftover "+l)
			}
		}
	}
	return strings.Join(bad, "; ")
}

func (so *soak) report(wall time.Duration, done map[string]int, probes string) {
	t := so.t
	issued, answeredBy := 0, map[string]int{}
	answered := 0
	for _, l := range strings.Split(probes, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 1 && f[0] == "I":
			issued += 100
		case len(f) == 2 && f[0] == "A":
			u, _ := strconv.ParseFloat(f[1], 64)
			answeredBy[so.causeAt(u)]++
			answered++
		}
	}
	so.mu.Lock()
	defer so.mu.Unlock()
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	ver, _ := so.e.s.Docker("version", "--format", "{{.Server.Version}}")
	head, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	p("# imdsguard chaos soak, %s", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	p("")
	p("`make soak` (e2e/soak_test.go TestSoak). Planned %v, wall time %v. dockerd %s, firewalld %v (%s backend). imdsguard %s. The machine (2 CPUs) was shared with other work while this ran.", so.dur, wall.Round(time.Second), ver, so.firewalld, so.e.s.FirewalldBackendName(), strings.TrimSpace(string(head)))
	p("")
	p("## Events")
	p("")
	table := func(head string, m map[string]int) {
		p("| %s |", head)
		p("|---|---|")
		for _, k := range sortedKeys(m) {
			p("| %s | %d |", strings.ReplaceAll(k, "|", "\\|"), m[k])
		}
	}
	table("Event | Count", done)
	p("")
	if so.fwFailed > 0 {
		p("")
		p("%d firewalld commands or restarts failed on firewalld's side (logged in the test output); enforcement was still waited for after each.", so.fwFailed)
	}
	p("")
	p("## IMDS probes (every 10 ms from a bridge container, `--restart always`)")
	p("")
	p("Issued ≈ %d, answered %d. An answered probe is put down to the last event before it.", issued, answered)
	p("")
	table("Last event before the answer | Answered probes", answeredBy)
	p("")
	p("## Ruleset snapshots (every 50 ms, both families)")
	p("")
	interval := 0.0
	if so.snaps > 1 {
		interval = (so.lastSnap - so.firstSnap) / float64(so.snaps-1) * 1000
	}
	p("%d snapshots, one every %.0f ms on average (50 ms asked: each is an iptables-save pair through the Docker root's launcher, slower on a loaded machine); %d without the whole block.", so.snaps, interval, so.unprotected)
	p("")
	table("Last event before an unprotected snapshot | Snapshots", so.unprotectedBy)
	p("")
	p("## Time to verified enforcement (agent status: protected, from a sync begun after the event)")
	p("")
	p("| After | n | median | max |")
	p("|---|---|---|---|")
	for _, k := range sortedKeys(so.restarts) {
		d := slices.Clone(so.restarts[k])
		slices.Sort(d)
		p("| %s | %d | %v | %v |", k, len(d), d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
	}
	p("")
	p("## Agent RSS")
	p("")
	var longest *incarnation
	for _, a := range so.agents {
		if a.rssFirst != 0 && (longest == nil || a.endAt.Sub(a.firstAt) > longest.endAt.Sub(longest.firstAt)) {
			longest = a
		}
	}
	if longest != nil {
		p("%d incarnations (SIGKILLed and restarted). The longest-lived sampled one: %d kB 10 s after its start, %d kB %v later (growth %+d kB).",
			len(so.agents), longest.rssFirst, longest.rssEnd, longest.endAt.Sub(longest.firstAt).Round(time.Second), longest.rssEnd-longest.rssFirst)
		if longest.rssMinute != 0 {
			p("From its first minute on (warmed up): %d kB, %d kB %v later (growth %+d kB).",
				longest.rssMinute, longest.rssEnd, longest.endAt.Sub(longest.minuteAt).Round(time.Second), longest.rssEnd-longest.rssMinute)
		}
		if so.dur >= 10*time.Minute {
			p("No SIGKILL in the last 40 %% of the chaos, so that incarnation lived through every other kind of event.")
		}
		if len(longest.mem) > 0 {
			p("")
			p("Its memory once a minute (Go heap in use from its `/debug/pprof/heap`; RSS also holds memory the runtime has not returned yet):")
			p("")
			b.WriteString(memTable(longest.mem))
		}
	}
	p("")
	p("## Duplicate rules")
	p("")
	if len(so.dupSnaps) == 0 {
		p("Of imdsguard's rules: none in any snapshot.")
	} else {
		table("Duplicate of imdsguard's | Snapshots showing it", so.dupSnaps)
	}
	p("")
	if len(so.dockerDupSnaps) == 0 {
		p("Docker's FORWARD jump to DOCKER-USER (imdsguard never writes it): never doubled.")
	} else {
		table("Docker's rule doubled (not imdsguard's) | Snapshots showing it", so.dockerDupSnaps)
	}
	p("")
	if len(so.dupBad) > 0 {
		p("Failures (imdsguard's own rules doubled):\n\n```\n%s\n```", strings.Join(so.dupBad, "\n"))
	}
	t.Logf("soak results:\n%s", b.String())
	if out := os.Getenv("IMDSGUARD_SOAK_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
	if len(so.dupBad) > 0 {
		t.Errorf("duplicate rules:\n%s", strings.Join(so.dupBad, "\n"))
	}
	// Growth counts from the warmed-up agent (its first minute: caches
	// filled, the heap at its GC goal), to the end.
	if longest != nil && so.dur >= 10*time.Minute && longest.rssMinute != 0 && longest.rssEnd-longest.rssMinute >= 2048 {
		t.Errorf("agent RSS grew by %d kB after its first minute", longest.rssEnd-longest.rssMinute)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
