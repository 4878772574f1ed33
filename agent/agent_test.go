package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// fakeDocker is a Docker whose containers and reachability tests set.
type fakeDocker struct {
	mu         sync.Mutex
	containers []docker.Container
	env        map[string][]string
	images     map[string]map[string]string
	err        error
	// hang, when set, blocks Containers until it is closed or ctx ends: a
	// dockerd that accepts connections and never answers.
	hang chan struct{}
	// changed and connected are the agent's Watch callbacks.
	changed   func()
	connected func(error)
	lists     int // calls of Containers
	envReads  map[string]int
}

func (d *fakeDocker) Containers(ctx context.Context) ([]docker.Container, error) {
	d.mu.Lock()
	hang := d.hang
	d.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lists++
	return append([]docker.Container(nil), d.containers...), d.err
}

// ImageLabels: the fake's images carry the labels in images, by image ID.
func (d *fakeDocker) ImageLabels(_ context.Context, image string) (map[string]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.images[image], nil
}

func (d *fakeDocker) Env(_ context.Context, id string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.envReads == nil {
		d.envReads = map[string]int{}
	}
	d.envReads[id]++
	return d.env[id], nil
}

func (d *fakeDocker) Watch(ctx context.Context, changed func(), connected func(error)) {
	d.mu.Lock()
	d.changed, d.connected = changed, connected
	d.mu.Unlock()
	connected(nil)
	changed()
	<-ctx.Done()
}

// event is a Docker event: the daemon's watch callback, once subscribed.
func (d *fakeDocker) event(t *testing.T) {
	t.Helper()
	d.disconnect(t, nil)
}

// disconnect tells the daemon the connection to Docker changed (err nil:
// reconnected), then that Docker changed, as the real watch does.
func (d *fakeDocker) disconnect(t *testing.T, err error) {
	t.Helper()
	eventually(t, "the Docker watch", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.changed != nil
	})
	d.mu.Lock()
	changed, connected := d.changed, d.connected
	d.mu.Unlock()
	if err != nil {
		connected(err)
	}
	changed()
}

func (d *fakeDocker) listCalls() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lists
}

func testLog(t testing.TB) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	if testing.Verbose() {
		l.SetOutput(os.Stderr)
	}
	return logrus.NewEntry(l)
}

type fixture struct {
	fakes  map[firewall.Family]*firewall.Fake
	docker *fakeDocker
	cfg    Config
	agent  *Agent
	ready  atomic.Int32
	nft    chan func() // the watcher's changed callback, once subscribed
	// Optional collaborators for the awsvpc, host-network and exemption
	// tests; nil keeps the defaults.
	ns   Namespaces
	sys  System
	insp map[string]docker.Details // makes the Docker an docker.Inspector when set
	// ports answers bridge-port lookups by pid (see exemptable).
	ports fakePorts
	// ipv6 is the kernel's IPv6 probe; nil: the kernel has IPv6.
	ipv6 func() string
	// wrap, when set, wraps the Docker the agent gets.
	wrap func(docker.Source) docker.Source
}

// fakePorts is a PortFinder answering by pid.
type fakePorts map[int]map[netip.Addr]docker.BridgePort

func (f fakePorts) Ports(pid int) (map[netip.Addr]docker.BridgePort, error) {
	p, ok := f[pid]
	if !ok {
		return nil, fmt.Errorf("no network namespace for pid %d", pid)
	}
	return p, nil
}

// exemptable gives c a process and, for each address, the bridge port
// veth<pid>, as the lister would find them; it returns that port's ACCEPT
// for c's first IPv4 address.
func (fx *fixture) exemptable(c docker.Container, pid int) string {
	if fx.insp == nil {
		fx.insp = map[string]docker.Details{}
	}
	if fx.ports == nil {
		fx.ports = fakePorts{}
	}
	fx.insp[c.ID] = docker.Details{Pid: pid}
	port := fmt.Sprintf("veth%d", pid)
	ports := map[netip.Addr]docker.BridgePort{}
	for _, a := range slices.Concat(c.IPv4, c.IPv6) {
		ports[a] = docker.BridgePort{Name: port, Bridge: "br-test"}
	}
	fx.ports[pid] = ports
	if len(c.IPv4) == 0 {
		return ""
	}
	return "-A IMDS-GUARD -s " + c.IPv4[0].String() + "/32 -d 169.254.169.254/32 -m physdev --physdev-in " + port + " -j ACCEPT"
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	fx := &fixture{
		ipv6:   func() string { return "" },
		fakes:  map[firewall.Family]*firewall.Fake{firewall.IPv4: firewall.NewFake(), firewall.IPv6: firewall.NewFake()},
		docker: &fakeDocker{env: map[string][]string{}},
		nft:    make(chan func(), 1),
		cfg: Config{
			HostRoot: dir, StatusSocket: filepath.Join(dir, "status.sock"), Action: firewall.ActionDrop,
			IPv6: true, ECSConfigMode: ECSModeCheck, ResyncInterval: time.Hour, IPTablesBackend: "auto",
		},
	}
	return fx
}

func (fx *fixture) build(t testing.TB) *Agent {
	tables := map[firewall.Family]firewall.Tables{firewall.IPv4: fx.fakes[firewall.IPv4], firewall.IPv6: fx.fakes[firewall.IPv6]}
	fams := fx.cfg.Families()
	if fx.ipv6 != nil && fx.ipv6() != "" {
		fams = []firewall.Family{firewall.IPv4} // as RealFirewall builds it
	}
	mgr := firewall.NewManager(firewall.Spec{Action: fx.cfg.Action}, tables, fams...)
	// Bridge netfilter on, whatever the machine running the tests says.
	mgr.SetBridgeNF(func(firewall.Family) firewall.Tri { return firewall.Yes })
	var src docker.Source = fx.docker
	if fx.insp != nil {
		src = &inspectingDocker{fakeDocker: fx.docker, det: fx.insp}
	}
	if fx.wrap != nil {
		src = fx.wrap(src)
	}
	fx.agent = New(Options{
		Config: fx.cfg, Log: testLog(t), Docker: src, IPv6: fx.ipv6, Version: "test", Namespaces: fx.ns, System: fx.sys, Ports: fx.ports,
		Firewall: func() (Firewall, firewall.Backend, error) {
			return mgr, firewall.Backend{Mode: "nft", Why: "test"}, nil
		},
		Hooks: Hooks{Ready: func() { fx.ready.Add(1) }},
		WatchNFTables: func(ctx context.Context, changed func()) error {
			fx.nft <- changed
			<-ctx.Done()
			return nil
		},
	})
	return fx.agent
}

// watcher returns the nf_tables watcher's callback once the agent has
// subscribed.
func (fx *fixture) watcher(t *testing.T) func() {
	t.Helper()
	select {
	case changed := <-fx.nft:
		return changed
	case <-time.After(10 * time.Second):
		t.Fatal("the agent never subscribed to nf_tables notifications")
		return nil
	}
}

// start runs the daemon until the test ends; adjust sets what the
// fixture's options cannot before it runs.
func (fx *fixture) start(t *testing.T, adjust ...func(*Agent)) {
	t.Helper()
	a := fx.build(t)
	for _, f := range adjust {
		f(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// eventually polls cond; the deadline only bounds a hung test, it is not a
// performance claim.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLoopEnforcesAndRepairsDrift(t *testing.T) {
	fx := newFixture(t)
	fx.docker.containers = []docker.Container{{ID: "aaaaaaaaaaaaaaaa", Name: "web", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.2")}}}
	fx.start(t)
	eventually(t, "first sync", func() bool { return fx.agent.Status().Verdict == status.VerdictProtected })
	// The hook runs just after the status is published.
	eventually(t, "Ready", func() bool { return fx.ready.Load() >= 1 })
	if fx.ready.Load() != 1 {
		t.Fatalf("Ready called %d times", fx.ready.Load())
	}
	if st := fx.agent.Status(); st.Repairs != 0 {
		t.Fatalf("initial setup counted as %d repairs", st.Repairs)
	}
	changed := fx.watcher(t)
	// Served (and kept encoded) before the drift: the answer after it
	// must not be that copy.
	if qs, err := status.QueryStatus(context.Background(), fx.cfg.StatusSocket); err != nil || qs.Repairs != 0 {
		t.Fatalf("status before the drift: %v %+v", err, qs)
	}

	// Drift: someone flushes FORWARD; the nf_tables watcher says so.
	fx.fakes[firewall.IPv4].Flush(firewall.Forward)
	changed()
	eventually(t, "repair", func() bool { return fx.agent.Status().Repairs == 1 })
	st := fx.agent.Status()
	if st.Verdict != status.VerdictProtected || !st.Firewall.IPv4.Enforced {
		t.Fatalf("after repair: %+v", st)
	}
	if !strings.Contains(fx.fakes[firewall.IPv4].Dump(), "-A FORWARD -j IMDS-GUARD") {
		t.Fatal("jump not back")
	}
	if fx.ready.Load() != 1 {
		t.Fatalf("Ready called again after a repair")
	}

	// The status socket tells the same story.
	qs, err := status.QueryStatus(context.Background(), fx.cfg.StatusSocket)
	if err != nil {
		t.Fatal(err)
	}
	if qs.Verdict != status.VerdictProtected || qs.Repairs != 1 || len(qs.Containers) != 1 || !qs.Containers[0].Protected {
		t.Fatalf("status over the socket: %+v", qs)
	}
}

func TestHungDockerDoesNotDelayRepair(t *testing.T) {
	fx := newFixture(t)
	fx.start(t)
	eventually(t, "first sync", func() bool { return fx.agent.Status().Verdict == status.VerdictProtected })
	changed := fx.watcher(t)

	hang := make(chan struct{})
	fx.docker.mu.Lock()
	fx.docker.hang = hang
	fx.docker.mu.Unlock()
	defer close(hang)

	fx.fakes[firewall.IPv4].Flush(firewall.Forward)
	changed()
	// Docker never answers while this waits: the repair cannot have waited
	// for it.
	eventually(t, "repair while Docker hangs", func() bool {
		return strings.Contains(fx.fakes[firewall.IPv4].Dump(), "-A FORWARD -j IMDS-GUARD")
	})
}

func TestNothingProtectedBeforeFirstEnforcement(t *testing.T) {
	fx := newFixture(t)
	fx.fakes[firewall.IPv6].FailRestore = errors.New("ip6tables-restore: no IPv6 here")
	fx.start(t)
	fx.watcher(t)
	eventually(t, "a sync", func() bool { return fx.agent.Status().LastSync != nil })
	st := fx.agent.Status()
	if st.Verdict != status.VerdictExposed {
		t.Fatalf("verdict %s with IPv6 never enforced", st.Verdict)
	}
	if fx.ready.Load() != 0 {
		t.Fatal("Ready sent although IPv6 was never enforced")
	}
	if ok, _ := fx.agent.healthy(); ok {
		t.Fatal("healthy without a successful sync")
	}
	// The IPv4 block is in place all the same: one family failing does not
	// stop the other.
	if !st.Firewall.IPv4.Enforced {
		t.Fatal("IPv4 not enforced")
	}
}

func TestDockerDownStillEnforces(t *testing.T) {
	fx := newFixture(t)
	fx.docker.err = errors.New("dial unix /var/run/docker.sock: connect: no such file or directory")
	a := fx.build(t)
	st, err := a.Once(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Firewall.IPv4.Enforced || !st.Firewall.IPv6.Enforced {
		t.Fatal("firewall not enforced while Docker is down")
	}
	if st.Verdict != status.VerdictDegraded || st.Docker.Reachable {
		t.Fatalf("verdict %s, docker %+v", st.Verdict, st.Docker)
	}
}

func TestCheckChangesNothing(t *testing.T) {
	fx := newFixture(t)
	a := fx.build(t)
	st, err := a.Once(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if st.Verdict != status.VerdictExposed {
		t.Fatalf("verdict %s on an empty firewall", st.Verdict)
	}
	if fx.fakes[firewall.IPv4].Calls != 0 {
		t.Fatal("check changed the firewall")
	}
}

func TestECSSettingAndRunningAgent(t *testing.T) {
	fx := newFixture(t)
	if err := os.MkdirAll(filepath.Join(fx.cfg.HostRoot, "etc/ecs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fx.cfg.HostRoot, "etc/ecs/ecs.config"), []byte("ECS_CLUSTER=demo\nECS_AWSVPC_BLOCK_IMDS=true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fx.docker.containers = []docker.Container{
		{ID: "agent000000000000", Name: docker.ECSAgentName, NetworkMode: "host"},
		{ID: "pause000000000000", Name: "ecs-task-1-internalecspause", NetworkMode: "none",
			Labels: map[string]string{docker.LabelTaskARN: "arn:aws:ecs:us-east-1:1:task/c/1", docker.LabelContainerName: docker.PauseContainerName}},
		{ID: "app00000000000000", Name: "ecs-task-1-app", NetworkMode: "container:pause000000000000",
			Labels: map[string]string{docker.LabelTaskARN: "arn:aws:ecs:us-east-1:1:task/c/1", docker.LabelContainerName: "app"}},
	}
	// The running agent was started before the file said true.
	fx.docker.env["agent000000000000"] = []string{"ECS_CLUSTER=demo"}
	a := fx.build(t)
	st, err := a.Once(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ECSConfig.AWSVPCBlockIMDS || !st.ECSConfig.RestartNeeded {
		t.Fatalf("ecs %+v", st.ECSConfig)
	}
	if st.Verdict != status.VerdictDegraded {
		t.Fatalf("verdict %s", st.Verdict)
	}
	byName := map[string]status.ContainerStatus{}
	for _, c := range st.Containers {
		byName[c.Name] = c
	}
	if c := byName["ecs-task-1-app"]; c.Protected || !strings.Contains(c.Reason, "shares the network of ecs-task-1-internalecspause") {
		t.Fatalf("app container: %+v", c)
	}
	if c := byName[docker.ECSAgentName]; c.Protected || !c.Expected {
		t.Fatalf("ecs-agent: %+v", c)
	}
	// After the agent restarts with the setting (ecs-init creates a new
	// container), the task is protected and the host is too.
	fx.docker.containers[0].ID = "agent111111111111"
	fx.docker.env["agent111111111111"] = []string{"ECS_CLUSTER=demo", "ECS_AWSVPC_BLOCK_IMDS=true"}
	st, _ = a.Once(context.Background(), true)
	if st.Verdict != status.VerdictProtected || st.ECSConfig.RestartNeeded {
		t.Fatalf("after restart: %s %v", st.Verdict, st.Reasons)
	}
}

func TestECSEnforceWritesConfig(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.ECSConfigMode = ECSModeEnforce
	a := fx.build(t)
	st, err := a.Once(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ECSConfig.Wrote || !st.ECSConfig.AWSVPCBlockIMDS {
		t.Fatalf("ecs %+v", st.ECSConfig)
	}
	b, err := os.ReadFile(filepath.Join(fx.cfg.HostRoot, "etc/ecs/ecs.config"))
	if err != nil || !strings.Contains(string(b), "ECS_AWSVPC_BLOCK_IMDS=true") {
		t.Fatalf("ecs.config: %q %v", b, err)
	}
	// Check mode (Once without enforce) never writes.
	fx2 := newFixture(t)
	fx2.cfg.ECSConfigMode = ECSModeEnforce
	if _, err := fx2.build(t).Once(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fx2.cfg.HostRoot, "etc/ecs/ecs.config")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("check wrote ecs.config: %v", err)
	}
}

func TestMalformedECSJSONIsReportedNotFatal(t *testing.T) {
	fx := newFixture(t)
	if err := os.MkdirAll(filepath.Join(fx.cfg.HostRoot, "etc/ecs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fx.cfg.HostRoot, "etc/ecs/ecs.config.json"), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := fx.build(t).Once(context.Background(), true)
	if err == nil || !IsPartial(err) {
		t.Fatalf("want a partial error, got %v", err)
	}
	if !st.Firewall.IPv4.Enforced {
		t.Fatal("bad ECS config stopped enforcement")
	}
	if st.Verdict != status.VerdictDegraded || st.ECSConfig.Error == "" {
		t.Fatalf("verdict %s, ecs %+v", st.Verdict, st.ECSConfig)
	}
}

func TestClassify(t *testing.T) {
	v6 := []netip.Addr{netip.MustParseAddr("fd00:d0c::2")}
	base := func() picture {
		return picture{enforced: map[string]bool{"ipv4": true, "ipv6": true}, awsvpcBlock: true}
	}
	for _, tc := range []struct {
		name      string
		p         func(p *picture)
		c         docker.Container
		protected bool
		reason    string
	}{
		{"default bridge", nil, docker.Container{NetworkMode: "default"}, true, "bridged"},
		{"named network", nil, docker.Container{NetworkMode: "appnet"}, true, "bridged"},
		{"host", nil, docker.Container{NetworkMode: "host"}, false, "host network"},
		{"none without ECS", nil, docker.Container{NetworkMode: "none"}, true, "no network"},
		{"awsvpc with the setting", nil, docker.Container{NetworkMode: "none", Labels: map[string]string{docker.LabelTaskARN: "x"}}, true, "in effect"},
		{"awsvpc without the setting", func(p *picture) { p.awsvpcBlock = false }, docker.Container{NetworkMode: "none", Labels: map[string]string{docker.LabelTaskARN: "x"}}, false, "not in effect"},
		{"bridge, v4 not enforced", func(p *picture) { p.enforced["ipv4"] = false }, docker.Container{NetworkMode: "bridge"}, false, "IPv4 block is not in place"},
		{"bridge with v6, v6 not enforced", func(p *picture) { p.enforced["ipv6"] = false }, docker.Container{NetworkMode: "bridge", IPv6: v6}, false, "IPv6 block is not in place"},
		{"bridge with v6, v6 disabled", func(p *picture) { delete(p.enforced, "ipv6") }, docker.Container{NetworkMode: "bridge", IPv6: v6}, false, "--ipv6=false"},
		{"bridge v4 only, v6 not enforced", func(p *picture) { p.enforced["ipv6"] = false }, docker.Container{NetworkMode: "bridge"}, true, "bridged"},
		{"container: of a missing one", nil, docker.Container{NetworkMode: "container:deadbeef"}, false, "not running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base()
			if tc.p != nil {
				tc.p(&p)
			}
			tc.c.ID, tc.c.Name = "cccccccccccccccc", "c"
			p.containers = []docker.Container{tc.c}
			got := classify(p)[0]
			if got.Protected != tc.protected || !strings.Contains(got.Reason, tc.reason) {
				t.Errorf("got %v %q, want %v and a reason with %q", got.Protected, got.Reason, tc.protected, tc.reason)
			}
		})
	}
}

func TestContainerModeFollowsOwner(t *testing.T) {
	p := picture{enforced: map[string]bool{"ipv4": true}, containers: []docker.Container{
		{ID: "1111111111111111", Name: "hostly", NetworkMode: "host"},
		{ID: "2222222222222222", Name: "sidecar", NetworkMode: "container:hostly"},
		{ID: "3333333333333333", Name: "bridged", NetworkMode: "bridge"},
		{ID: "4444444444444444", Name: "sidecar2", NetworkMode: "container:333333333333"},
	}}
	got := map[string]bool{}
	for _, c := range classify(p) {
		got[c.Name] = c.Protected
	}
	if got["sidecar"] || !got["sidecar2"] {
		t.Fatalf("got %v", got)
	}
}

func TestVerdict(t *testing.T) {
	ok := []status.ContainerStatus{{Name: "a", Protected: true}}
	for _, tc := range []struct {
		name       string
		enforced   map[string]bool
		containers []status.ContainerStatus
		issues     []string
		want       string
	}{
		{"all good", map[string]bool{"ipv4": true, "ipv6": true}, ok, nil, status.VerdictProtected},
		{"v6 missing", map[string]bool{"ipv4": true, "ipv6": false}, ok, nil, status.VerdictExposed},
		{"host container", map[string]bool{"ipv4": true}, []status.ContainerStatus{{Name: "h", Reason: "host network"}}, nil, status.VerdictDegraded},
		{"ecs agent is expected", map[string]bool{"ipv4": true}, []status.ContainerStatus{{Name: "ecs-agent", Expected: true}}, nil, status.VerdictProtected},
		{"docker down", map[string]bool{"ipv4": true}, nil, []string{"Docker cannot be asked"}, status.VerdictDegraded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reasons := verdict(tc.enforced, tc.containers, tc.issues)
			if got != tc.want {
				t.Errorf("verdict %s (%v), want %s", got, reasons, tc.want)
			}
			if (got == status.VerdictProtected) != (len(reasons) == 0) {
				t.Errorf("reasons %v with verdict %s", reasons, got)
			}
		})
	}
}

// TestRunnerCoalescesAndRetries: a failed run is retried without a
// trigger, and any number of triggers during a run leave exactly one run
// pending, which the next run consumes.
func TestRunnerCoalescesAndRetries(t *testing.T) {
	var runs atomic.Int32
	release2, in3, hold3 := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var r *runner
	r = newRunner(func(ctx context.Context) error {
		switch runs.Add(1) {
		case 1:
			return errors.New("transient")
		case 2:
			<-release2 // hold the second run while triggers pile up
		case 3:
			close(in3)
			<-hold3
		}
		return nil
	}, time.Millisecond, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer close(hold3)
	go r.Loop(ctx)
	// Run 1 fails; the retry is run 2, with no trigger needed.
	eventually(t, "retry after failure", func() bool { return runs.Load() == 2 })
	for range 100 {
		r.Trigger()
	}
	if n := len(r.kick); n != 1 {
		t.Fatalf("100 triggers during one run left %d runs pending, want 1", n)
	}
	close(release2)
	select {
	case <-in3:
	case <-time.After(10 * time.Second):
		t.Fatal("the pending run never started")
	}
	// The period is an hour and nothing is pending: run 3 covers all 100.
	if n := len(r.kick); n != 0 || runs.Load() != 3 {
		t.Fatalf("during the coalesced run: %d pending, %d runs", n, runs.Load())
	}
}

// TestRunnerPeriodIsStartToStart: the period counts from the start of a
// run, so a run longer than the period is followed by the next one at
// once, not a whole period after it ends.
func TestRunnerPeriodIsStartToStart(t *testing.T) {
	const period, work = 400 * time.Millisecond, 500 * time.Millisecond
	var mu sync.Mutex
	var starts, ends []time.Time
	r := newRunner(func(ctx context.Context) error {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		time.Sleep(work) // a run that takes longer than the period
		mu.Lock()
		ends = append(ends, time.Now())
		mu.Unlock()
		return nil
	}, time.Millisecond, period)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Loop(ctx)
	eventually(t, "three runs", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(starts) >= 3
	})
	mu.Lock()
	defer mu.Unlock()
	// Start to start, the next run is due before the last one ends: it
	// starts a minimum interval after. End to end it would wait the whole
	// period. Measured from the run's own end, so a slow run on a busy
	// machine does not blur the two.
	for i := 1; i < 3; i++ {
		if idle := starts[i].Sub(ends[i-1]); idle >= period/2 {
			t.Fatalf("run %d started %v after the one before ended, want at once (the %v period had passed)", i+1, idle, period)
		}
	}
}

func TestConfigEnvAndFlags(t *testing.T) {
	env := map[string]string{"IMDSGUARD_ACTION": "reject", "IMDSGUARD_IPV6": "false", "IMDSGUARD_RESYNC_INTERVAL": "2s", "IMDSGUARD_LOG_LEVEL": "debug"}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var c Config
	c.Bind(fs)
	if err := fs.Parse([]string{"--log-level=warn"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.Action != firewall.ActionReject || c.IPv6 || c.ResyncInterval != 2*time.Second {
		t.Fatalf("env not applied: %+v", c)
	}
	if c.LogLevel != "warn" {
		t.Fatalf("the command line must win over the environment: %q", c.LogLevel)
	}
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c = Config{}
	c.Bind(fs)
	_ = fs.Parse(nil)
	err := c.Finish(fs, func(k string) string { return map[string]string{"IMDSGUARD_ACTION": "allow"}[k] })
	if err == nil || !strings.Contains(err.Error(), "IMDSGUARD_ACTION") {
		t.Fatalf("bad env value: %v", err)
	}
}

// TestHealthzFollowsSyncs: 200 "ok" after a good sync, 503 with the
// reason once a sync fails, 200 again after the next good one.
func TestHealthzFollowsSyncs(t *testing.T) {
	fx := newFixture(t)
	fx.start(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", fx.cfg.StatusSocket)
	}}}
	get := func() (int, string) {
		resp, err := hc.Get("http://imdsguard/healthz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	eventually(t, "first sync", func() bool { ok, _ := fx.agent.healthy(); return ok })
	if code, body := get(); code != http.StatusOK || body != "ok" {
		t.Fatalf("healthy: %d %q", code, body)
	}
	// An ECS configuration that cannot be read fails the sync (partly).
	dir := filepath.Join(fx.cfg.HostRoot, "etc/ecs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ecs.config.json"), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	fx.agent.Trigger()
	eventually(t, "a failed sync", func() bool { code, _ := get(); return code == http.StatusServiceUnavailable })
	if _, body := get(); !strings.Contains(body, "last sync failed") || !strings.Contains(body, "ecs.config.json") {
		t.Fatalf("unhealthy body %q", body)
	}
	if err := os.Remove(filepath.Join(dir, "ecs.config.json")); err != nil {
		t.Fatal(err)
	}
	fx.agent.Trigger()
	eventually(t, "healthy again", func() bool { code, _ := get(); return code == http.StatusOK })
}

func TestThrottleFiresFirstAndLast(t *testing.T) {
	var n atomic.Int32
	fire := throttle(time.Hour, func() { n.Add(1) })
	for range 50 {
		fire()
	}
	if got := n.Load(); got != 1 {
		t.Fatalf("a burst fired %d times at once, want 1", got)
	}
	var m atomic.Int32
	fire = throttle(20*time.Millisecond, func() { m.Add(1) })
	for range 50 {
		fire()
	}
	eventually(t, "the trailing call", func() bool { return m.Load() == 2 })
}

// healthy is /healthz's answer.
func (a *Agent) healthy() (bool, string) { return a.pub.Healthy() }
