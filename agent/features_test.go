package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
	"github.com/imdsguard/imdsguard/tasknet"
)

// inspectingDocker adds Inspect to fakeDocker; a container without details
// is not running.
type inspectingDocker struct {
	*fakeDocker
	det map[string]docker.Details
}

func (d *inspectingDocker) Inspect(_ context.Context, id string) (docker.Details, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	det, ok := d.det[id]
	if !ok {
		return docker.Details{}, fmt.Errorf("container %s is not running", id)
	}
	return det, nil
}

// fakeNS is an in-memory set of namespaces by path. Each has a default
// route through its ENI, so without a blackhole (or the guard rule) a
// lookup to IMDS leaves; bypassed namespaces hold a policy rule and a
// route in another table that go around the main table's blackhole.
type fakeNS struct {
	mu       sync.Mutex
	routes   map[string]*tasknet.NSRoutes
	host     map[string]bool
	bypassed map[string]bool
	added    []string // "path family", in order
	watches  map[string]func()
	reads    int // Routes calls
	// silent watches never report, not even once subscribed.
	silent bool
}

func newFakeNS() *fakeNS {
	return &fakeNS{routes: map[string]*tasknet.NSRoutes{}, host: map[string]bool{}, bypassed: map[string]bool{}, watches: map[string]func(){}}
}

func (n *fakeNS) Routes(path string) (tasknet.NSRoutes, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.reads++
	if n.host[path] {
		return tasknet.NSRoutes{}, fmt.Errorf("%s: %w", path, tasknet.ErrHostNamespace)
	}
	r, ok := n.routes[path]
	if !ok {
		return tasknet.NSRoutes{}, fmt.Errorf("opening network namespace %s: %w", path, fs.ErrNotExist)
	}
	out := *r
	// What a lookup honouring the policy rules finds.
	escape := func(blackhole, guard bool) string {
		switch {
		case guard:
			return ""
		case n.bypassed[path]:
			return "a route lookup reaches IMDS: routed via 192.0.2.1 (table 100)"
		case !blackhole:
			return "a route lookup reaches IMDS: routed via 192.0.2.1 (table 254)"
		}
		return ""
	}
	out.V4Escape = escape(out.V4Blackhole, out.V4Guard)
	if out.HasIPv6 {
		out.V6Escape = escape(out.V6Blackhole, out.V6Guard)
	}
	return out, nil
}

// bypass is `ip rule add to 169.254.169.254 lookup 100` plus a route in
// table 100, with or without the guard rule deleted first.
func (n *fakeNS) bypass(path string, deleteGuard bool) {
	n.mu.Lock()
	n.bypassed[path] = true
	if deleteGuard {
		n.routes[path].V4Guard = false
	}
	cb := n.watches[path]
	n.mu.Unlock()
	if cb != nil {
		cb()
	}
}

func (n *fakeNS) Blackhole(path string, fams []firewall.Family) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.host[path] {
		return tasknet.ErrHostNamespace
	}
	for _, f := range fams {
		n.added = append(n.added, path+" "+string(f))
		if f == firewall.IPv6 {
			n.routes[path].V6Blackhole, n.routes[path].V6Guard = true, true
		} else {
			n.routes[path].V4Blackhole, n.routes[path].V4Guard = true, true
		}
	}
	return nil
}

// Watch reports once subscribed, as tasknet's does, then on every change
// the fake's helpers make.
// A watch counts as watching once it has reported.
func (n *fakeNS) Watch(ctx context.Context, path string, changed func()) error {
	n.mu.Lock()
	silent := n.silent
	n.mu.Unlock()
	if !silent {
		changed()
	}
	n.mu.Lock()
	n.watches[path] = changed
	n.mu.Unlock()
	<-ctx.Done()
	n.mu.Lock()
	delete(n.watches, path)
	n.mu.Unlock()
	return nil
}

// deleteRoute is `ip route del 169.254.169.254` inside the task, then the
// kernel's notification.
func (n *fakeNS) deleteRoute(path string) {
	n.change(path, func(r *tasknet.NSRoutes) { r.V4Blackhole = false })
}

// change changes the namespace's routes, then notifies as the kernel does.
func (n *fakeNS) change(path string, fn func(*tasknet.NSRoutes)) {
	n.mu.Lock()
	fn(n.routes[path])
	cb := n.watches[path]
	n.mu.Unlock()
	if cb != nil {
		cb()
	}
}

func (n *fakeNS) watching(path string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.watches[path] != nil
}

func (n *fakeNS) addedRoutes() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.added)
}

const (
	pauseID = "pausepausepause0"
	appID   = "appappappappapp0"
	taskARN = "arn:aws:ecs:us-east-1:123456789012:task/c/0123"
)

// awsvpcFixture: one awsvpc task (pause + app joined to it) whose namespace
// has no blackhole route yet.
func awsvpcFixture(t *testing.T, mode string, appNetAdmin bool) *fixture {
	fx := newFixture(t)
	fx.cfg.AWSVPCMode = mode
	fx.docker.containers = []docker.Container{
		{ID: pauseID, Name: "ecs-t-1-internalecspause", NetworkMode: "none", Labels: map[string]string{
			docker.LabelTaskARN: taskARN, docker.LabelContainerName: docker.PauseContainerName, docker.LabelTaskFamily: "t"}},
		{ID: appID, Name: "ecs-t-1-app", NetworkMode: "container:" + pauseID, Labels: map[string]string{
			docker.LabelTaskARN: taskARN, docker.LabelContainerName: "app", docker.LabelTaskFamily: "t"}},
	}
	fx.insp = map[string]docker.Details{
		pauseID: {Pid: 4242, SandboxKey: "/var/run/docker/netns/pause"},
		appID:   {Pid: 4243, NetAdmin: appNetAdmin},
	}
	ns := newFakeNS()
	ns.routes["/var/run/docker/netns/pause"] = &tasknet.NSRoutes{}
	fx.ns = ns
	return fx
}

func TestAWSVPCCheckReportsExposedAndNetAdmin(t *testing.T) {
	fx := awsvpcFixture(t, ECSModeCheck, true)
	st, err := fx.build(t).Once(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.AWSVPC.Tasks) != 1 {
		t.Fatalf("tasks %+v", st.AWSVPC)
	}
	task := st.AWSVPC.Tasks[0]
	if task.Protected || task.TaskARN != taskARN || !slices.Equal(task.NetAdmin, []string{"ecs-t-1-app"}) || !slices.Equal(task.Containers, []string{"ecs-t-1-app"}) {
		t.Fatalf("task %+v", task)
	}
	if added := fx.ns.(*fakeNS).addedRoutes(); len(added) != 0 {
		t.Fatalf("check mode added routes: %v", added)
	}
	if st.Verdict != status.VerdictDegraded {
		t.Fatalf("verdict %s", st.Verdict)
	}
	for _, c := range st.Containers {
		if c.Protected {
			t.Errorf("%s reported protected: %s", c.Name, c.Reason)
		}
	}
	// With the route in place the task is protected, but NET_ADMIN keeps
	// the host degraded in check mode: nothing would put the route back.
	fx.ns.(*fakeNS).routes["/var/run/docker/netns/pause"].V4Blackhole = true
	st, _ = fx.agent.Once(context.Background(), true)
	if !st.AWSVPC.Tasks[0].Protected || st.Verdict != status.VerdictDegraded || !strings.Contains(strings.Join(st.Reasons, "\n"), "NET_ADMIN") && !strings.Contains(strings.Join(st.Reasons, "\n"), "can delete") {
		t.Fatalf("verdict %s reasons %v task %+v", st.Verdict, st.Reasons, st.AWSVPC.Tasks[0])
	}
}

func TestAWSVPCEnforceRetrofitsAndRepairs(t *testing.T) {
	fx := awsvpcFixture(t, ECSModeEnforce, true)
	ns := fx.ns.(*fakeNS)
	path := "/var/run/docker/netns/pause"
	fx.start(t)
	eventually(t, "protected", func() bool { return fx.agent.Status().Verdict == status.VerdictProtected })
	if got := ns.addedRoutes(); !slices.Equal(got, []string{path + " ipv4"}) {
		t.Fatalf("added %v: a v4-only namespace gets exactly the IPv4 blackhole", got)
	}
	if st := fx.agent.Status(); st.Repairs != 0 {
		t.Fatalf("a retrofit counted as %d repairs", st.Repairs)
	}
	eventually(t, "watching the namespace", func() bool { return ns.watching(path) })

	// Someone with NET_ADMIN deletes the route: the watch triggers a sync.
	ns.deleteRoute(path)
	eventually(t, "repair", func() bool { return fx.agent.Status().Repairs == 1 })
	if got := ns.addedRoutes(); len(got) != 2 {
		t.Fatalf("added %v", got)
	}
	st := fx.agent.Status()
	if !st.AWSVPC.Tasks[0].Protected || st.Verdict != status.VerdictProtected {
		t.Fatalf("after repair: %s %+v", st.Verdict, st.AWSVPC.Tasks[0])
	}

	// The namespace gains IPv6 (its routes come with it): the IPv6
	// blackhole follows.
	ns.change(path, func(r *tasknet.NSRoutes) { r.HasIPv6 = true })
	eventually(t, "ipv6 blackhole", func() bool { return fx.agent.Status().AWSVPC.Tasks[0].IPv6Route })

	// The task stops: its watch goes with it.
	fx.docker.mu.Lock()
	fx.docker.containers = nil
	fx.docker.mu.Unlock()
	fx.docker.event(t)
	eventually(t, "watch stopped", func() bool { return !ns.watching(path) })
}

// TestAWSVPCPolicyRuleBypass: a task that routes IMDS around the main
// table's blackhole through a rule of its own is exposed in check mode
// and, in enforce mode, gets the guard rule and is blocked; deleting the
// guard to bypass again is repaired.
func TestAWSVPCPolicyRuleBypass(t *testing.T) {
	path := "/var/run/docker/netns/pause"
	fx := awsvpcFixture(t, ECSModeCheck, true)
	ns := fx.ns.(*fakeNS)
	ns.routes[path].V4Blackhole = true
	ns.bypass(path, false)
	st, _ := fx.build(t).Once(context.Background(), true)
	task := st.AWSVPC.Tasks[0]
	if task.Protected || !task.IPv4Route || !strings.Contains(task.Reason, "despite the blackhole") || !strings.Contains(task.Escape, "table 100") {
		t.Fatalf("check mode, bypassed task: %+v", task)
	}
	if st.Verdict != status.VerdictDegraded || !strings.Contains(strings.Join(st.Reasons, "\n"), "table 100") {
		t.Fatalf("verdict %s %v", st.Verdict, st.Reasons)
	}
	if len(ns.addedRoutes()) != 0 {
		t.Fatal("check mode changed the namespace")
	}

	fx = awsvpcFixture(t, ECSModeEnforce, true)
	ns = fx.ns.(*fakeNS)
	ns.routes[path].V4Blackhole = true
	ns.bypass(path, false)
	fx.start(t)
	eventually(t, "protected", func() bool { return fx.agent.Status().Verdict == status.VerdictProtected })
	if task := fx.agent.Status().AWSVPC.Tasks[0]; !task.IPv4Guard || task.Escape != "" {
		t.Fatalf("enforce mode: %+v", task)
	}
	eventually(t, "watching the namespace", func() bool { return ns.watching(path) })
	ns.bypass(path, true)
	eventually(t, "guard repaired", func() bool { return fx.agent.Status().Repairs == 1 })
	if st := fx.agent.Status(); st.Verdict != status.VerdictProtected || !st.AWSVPC.Tasks[0].IPv4Guard {
		t.Fatalf("after the repair: %s %+v", st.Verdict, st.AWSVPC.Tasks[0])
	}
}

func TestAWSVPCNeverTouchesTheHost(t *testing.T) {
	fx := awsvpcFixture(t, ECSModeEnforce, false)
	ns := fx.ns.(*fakeNS)
	ns.host["/var/run/docker/netns/pause"] = true
	st, _ := fx.build(t).Once(context.Background(), true)
	if len(ns.addedRoutes()) != 0 {
		t.Fatal("acted on the host namespace")
	}
	if task := st.AWSVPC.Tasks[0]; task.Protected || !strings.Contains(task.Error, "host's own network namespace") {
		t.Fatalf("task %+v", task)
	}
}

func TestAWSVPCExemptFamilyNotEnforced(t *testing.T) {
	fx := awsvpcFixture(t, ECSModeEnforce, false)
	fx.cfg.ExemptTaskFamilies = []string{"t"}
	st, _ := fx.build(t).Once(context.Background(), true)
	if len(fx.ns.(*fakeNS).addedRoutes()) != 0 {
		t.Fatal("route added to an exempt task")
	}
	if st.Verdict != status.VerdictProtected || st.AWSVPC.Tasks[0].Exempt == "" {
		t.Fatalf("verdict %s (%v), task %+v", st.Verdict, st.Reasons, st.AWSVPC.Tasks[0])
	}
}

func TestExemptions(t *testing.T) {
	a4, b4, a6 := netip.MustParseAddr("172.17.0.2"), netip.MustParseAddr("172.17.0.3"), netip.MustParseAddr("fd00:ec2:d0c::2")
	cfg := Config{ExemptLabel: ExampleExemptLabel, ExemptTaskFamilies: []string{"xray"}}
	label := map[string]string{"imdsguard.allow-imds": "true"}
	x4 := netip.MustParseAddr("172.30.0.5")
	port := func(name string, as ...netip.Addr) map[netip.Addr]docker.BridgePort {
		m := map[netip.Addr]docker.BridgePort{}
		for _, a := range as {
			m[a] = docker.BridgePort{Name: name, Bridge: "docker0"}
		}
		return m
	}
	none := map[string]string{}
	cs := []docker.Container{
		{ID: "1", Name: "cwagent", NetworkMode: "bridge", IPv4: []netip.Addr{a4}, IPv6: []netip.Addr{a6}, Labels: label, ImageLabels: none, Ports: port("veth1", a4, a6)},
		{ID: "2", Name: "app", NetworkMode: "bridge", IPv4: []netip.Addr{b4}},
		{ID: "3", Name: "xray", NetworkMode: "appnet", IPv4: []netip.Addr{x4}, Labels: map[string]string{docker.LabelTaskFamily: "xray"}, ImageLabels: none, Ports: port("veth3", x4)},
		{ID: "4", Name: "sidecar", NetworkMode: "container:app", Labels: label, ImageLabels: none},
		{ID: "5", Name: "falselabel", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.9")}, Labels: map[string]string{"imdsguard.allow-imds": "false"}},
		{ID: "6", Name: docker.ECSAgentName, NetworkMode: "host", Labels: label},
		{ID: "7", Name: "fromimage", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.7")}, Labels: label, ImageLabels: label, Ports: port("veth7", netip.MustParseAddr("172.17.0.7"))},
		{ID: "8", Name: "unreadimage", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.8")}, Labels: label, Ports: port("veth8", netip.MustParseAddr("172.17.0.8"))},
		{ID: "9", Name: "noport", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.10")}, Labels: label, ImageLabels: none, PortErr: "inspect failed"},
	}
	why, list, spec := exemptions(cfg, cs)
	want := []firewall.Exemption{
		{Container: "1", Name: "cwagent", Port: "veth1", Addrs: []netip.Addr{a4, a6}},
		{Container: "3", Name: "xray", Port: "veth3", Addrs: []netip.Addr{x4}},
	}
	if fmt.Sprint(spec) != fmt.Sprint(want) {
		t.Fatalf("spec %v, want %v", spec, want)
	}
	if why["1"] == "" || why["3"] == "" || why["2"] != "" || why["4"] != "" || why["5"] != "" || why["7"] != "" || why["8"] != "" || why["9"] != "" {
		t.Fatalf("why %v", why)
	}
	notes := map[string]string{}
	for _, e := range list {
		notes[e.Name] = e.Note
	}
	for name, want := range map[string]string{"fromimage": "the image carries the same label", "unreadimage": "could not be read", "noport": "no bridge port found for 172.17.0.10: not exempted (inspect failed)"} {
		if !strings.Contains(notes[name], want) {
			t.Errorf("%s: note %q, want %q", name, notes[name], want)
		}
	}
	names := []string{}
	for _, e := range list {
		names = append(names, e.Name)
		if e.Name == "sidecar" && (e.Applied || !strings.Contains(e.Note, "app")) {
			t.Errorf("a label on a joiner must be ignored, naming the owner: %+v", e)
		}
	}
	if !slices.Equal(names, []string{"cwagent", "fromimage", "noport", "sidecar", "unreadimage", "xray"}) {
		t.Fatalf("list %v", names)
	}

	// Two running containers claim one address (a stale list during
	// reuse): neither gets an exemption for it.
	cs[1].IPv4 = []netip.Addr{a4}
	_, list, spec = exemptions(cfg, cs)
	if slices.Contains(spec[0].Addrs, a4) {
		t.Fatalf("a shared address was exempted: %v", spec)
	}
	if !strings.Contains(list[0].Note, "also claimed") {
		t.Fatalf("note %+v", list[0])
	}
	// Label disabled and no families: nothing.
	if _, list, _ := exemptions(Config{}, cs); len(list) != 0 {
		t.Fatalf("%+v", list)
	}
}

// TestExemptionFollowsTheContainer: the ACCEPT is there while the labeled
// container runs and gone in the sync that no longer sees it; a container
// that gets its address is blocked.
func TestExemptionFollowsTheContainer(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.ExemptLabel = ExampleExemptLabel
	ip := netip.MustParseAddr("172.30.0.10")
	cw := docker.Container{ID: "aaaaaaaaaaaaaaaa", Name: "cw", NetworkMode: "appnet", IPv4: []netip.Addr{ip},
		Labels: map[string]string{"imdsguard.allow-imds": "true"}}
	fx.docker.containers = []docker.Container{cw}
	accept := fx.exemptable(cw, 7)
	a := fx.build(t)
	ctx := context.Background()
	st, err := a.Once(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fx.fakes[firewall.IPv4].Dump(), accept) || st.Verdict != status.VerdictProtected || len(st.Exemptions) != 1 {
		t.Fatalf("verdict %s %v\n%s", st.Verdict, st.Reasons, fx.fakes[firewall.IPv4].Dump())
	}
	if c := st.Containers[0]; c.Protected || !c.Expected || !strings.Contains(c.Reason, "exempt") {
		t.Fatalf("container %+v", c)
	}
	a.ready = true // past the initial setup: now only drift counts as repairs

	// Stopped; another container starts with the same address.
	fx.docker.containers = []docker.Container{{ID: "bbbbbbbbbbbbbbbb", Name: "other", NetworkMode: "appnet", IPv4: []netip.Addr{ip}}}
	st, err = a.Once(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(fx.fakes[firewall.IPv4].Dump(), accept) || len(st.Exemptions) != 0 || !st.Containers[0].Protected {
		t.Fatalf("exemption outlived its container:\n%s", fx.fakes[firewall.IPv4].Dump())
	}
	if a.repairs != 0 {
		t.Fatalf("an exemption change counted as %d repairs", a.repairs)
	}

	// Docker unreachable: no exemption survives.
	fx.docker.containers = []docker.Container{{ID: "aaaaaaaaaaaaaaaa", Name: "cw", NetworkMode: "appnet", IPv4: []netip.Addr{ip},
		Labels: map[string]string{"imdsguard.allow-imds": "true"}}}
	if _, err := a.Once(ctx, true); err != nil {
		t.Fatal(err)
	}
	fx.docker.err = errors.New("docker down")
	if _, err := a.Once(ctx, true); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(fx.fakes[firewall.IPv4].Dump(), accept) {
		t.Fatal("exemption kept while Docker cannot be asked")
	}
}

// fakeSys is a System with a cgroup layout tests change: files are
// /proc/PID/cgroup contents, ids the cgroups' identities (1 if unset).
type fakeSys struct {
	unified error
	files   map[string]string
	ids     map[string]uint64
}

func (s fakeSys) CgroupV2Unified() error { return s.unified }
func (s fakeSys) CgroupID(path string) (uint64, error) {
	if id, ok := s.ids[path]; ok {
		return id, nil
	}
	return 1, nil
}
func (s fakeSys) ReadFile(p string) ([]byte, error) {
	if b, ok := s.files[p]; ok {
		return []byte(b), nil
	}
	return nil, fs.ErrNotExist
}

func hostFixture(t *testing.T, unified error) *fixture {
	fx := newFixture(t)
	fx.cfg.BlockHostNetwork = true
	fx.docker.containers = []docker.Container{
		{ID: "agentagentagent0", Name: docker.ECSAgentName, NetworkMode: "host"},
		{ID: "daemondaemondae0", Name: "ecs-mon-1-collector", NetworkMode: "host", Labels: map[string]string{docker.LabelTaskARN: taskARN, docker.LabelContainerName: "collector"}},
		{ID: "rootrootrootroo0", Name: "inroot", NetworkMode: "host"},
		{ID: "parentparentpar0", Name: "parent", NetworkMode: "host"},
	}
	fx.insp = map[string]docker.Details{
		"agentagentagent0": {Pid: 10}, "daemondaemondae0": {Pid: 20}, "rootrootrootroo0": {Pid: 30}, "parentparentpar0": {Pid: 40},
	}
	fx.sys = fakeSys{unified: unified, ids: map[string]uint64{}, files: map[string]string{
		"/proc/self/cgroup": "0::/system.slice/imdsguard.service\n",
		"/proc/1/cgroup":    "0::/init.scope\n",
		"/proc/10/cgroup":   "0::/system.slice/docker-agent.scope\n",
		"/proc/20/cgroup":   "0::/ecstasks-0123.slice/docker-collector.scope\n",
		"/proc/30/cgroup":   "0::/\n",
		"/proc/40/cgroup":   "0::/system.slice\n",
	}}
	return fx
}

func TestHostNetworkBlockedByCgroup(t *testing.T) {
	fx := hostFixture(t, nil)
	st, _ := fx.build(t).Once(context.Background(), true)
	if st.HostNetwork.Enforcement != "active" {
		t.Fatalf("enforcement %q", st.HostNetwork.Enforcement)
	}
	got := map[string]bool{}
	for _, c := range st.HostNetwork.Containers {
		got[c.Name] = c.Blocked
	}
	want := map[string]bool{docker.ECSAgentName: false, "ecs-mon-1-collector": true, "inroot": false, "parent": false}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("blocked %v, want %v", got, want)
	}
	dump := fx.fakes[firewall.IPv4].Dump()
	if !strings.Contains(dump, `-A IMDS-GUARD-HOST -d 169.254.169.254/32 -m cgroup --path "/ecstasks-0123.slice/docker-collector.scope" -j DROP`) ||
		!strings.Contains(dump, "-A OUTPUT -j IMDS-GUARD-HOST") || strings.Count(dump, "-m cgroup") != 1 {
		t.Fatalf("ruleset:\n%s", dump)
	}
	// inroot (the root cgroup) and parent (an ancestor of the agent's own
	// cgroup) stay reachable and degrade the verdict.
	if st.Verdict != status.VerdictDegraded || !strings.Contains(strings.Join(st.Reasons, "\n"), "container parent can reach IMDS") {
		t.Fatalf("verdict %s %v", st.Verdict, st.Reasons)
	}

	// The collector dies: its rule goes.
	fx.docker.containers = fx.docker.containers[:1]
	st, _ = fx.agent.Once(context.Background(), true)
	if strings.Contains(fx.fakes[firewall.IPv4].Dump(), "-m cgroup") || strings.Contains(strings.Join(st.Reasons, "\n"), "container") {
		t.Fatalf("verdict %s %v:\n%s", st.Verdict, st.Reasons, fx.fakes[firewall.IPv4].Dump())
	}
}

// TestHostNetworkFailsClosed: a container whose inspect or cgroup read
// fails keeps its rule (and says so), and only a listing without it lifts
// the rule; a container restarted in the same cgroup path gets its rule
// put in again (the kernel resolved the old cgroup).
func TestHostNetworkFailsClosed(t *testing.T) {
	fx := hostFixture(t, nil)
	rule := `-A IMDS-GUARD-HOST -d 169.254.169.254/32 -m cgroup --path "/ecstasks-0123.slice/docker-collector.scope" -j DROP`
	a := fx.build(t)
	ctx := context.Background()
	if _, err := a.Once(ctx, true); err != nil {
		t.Fatal(err)
	}
	collector := func(st *status.Status) status.HostContainer {
		for _, c := range st.HostNetwork.Containers {
			if c.Name == "ecs-mon-1-collector" {
				return c
			}
		}
		t.Fatal("collector not in the status")
		return status.HostContainer{}
	}
	insp := a.source.(*inspectingDocker)
	for _, fail := range []struct {
		name         string
		break_, heal func()
	}{
		{"inspect fails", func() { delete(insp.det, "daemondaemondae0") }, func() { insp.det["daemondaemondae0"] = docker.Details{Pid: 20} }},
		{"cgroup read fails", func() { delete(fx.sys.(fakeSys).files, "/proc/20/cgroup") }, func() {
			fx.sys.(fakeSys).files["/proc/20/cgroup"] = "0::/ecstasks-0123.slice/docker-collector.scope\n"
		}},
	} {
		fail.break_()
		st, err := a.Once(ctx, true)
		if err == nil || !IsPartial(err) {
			t.Fatalf("%s: want a partial error (retried), got %v", fail.name, err)
		}
		if c := collector(st); !c.Blocked || !strings.Contains(c.Reason, "kept from the last sync") || !strings.Contains(fx.fakes[firewall.IPv4].Dump(), rule) {
			t.Fatalf("%s: %+v\n%s", fail.name, c, fx.fakes[firewall.IPv4].Dump())
		}
		fail.heal()
	}

	// Restarted: same path, new cgroup. The chain is rebuilt without the
	// rule and with it again.
	calls := fx.fakes[firewall.IPv4].Calls
	if _, err := a.Once(ctx, true); err != nil || fx.fakes[firewall.IPv4].Calls != calls {
		t.Fatalf("a steady pass changed the firewall (%d calls) or failed: %v", fx.fakes[firewall.IPv4].Calls-calls, err)
	}
	fx.sys.(fakeSys).ids["/ecstasks-0123.slice/docker-collector.scope"] = 2
	if _, err := a.Once(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got := fx.fakes[firewall.IPv4].Calls - calls; got != 2 || !strings.Contains(fx.fakes[firewall.IPv4].Dump(), rule) {
		t.Fatalf("after a restart in the same cgroup path: %d restores, want 2 (without, then with the rule):\n%s", got, fx.fakes[firewall.IPv4].Dump())
	}

	// Gone from the listing, while its inspect fails: the rule goes.
	delete(insp.det, "daemondaemondae0")
	fx.docker.containers = slices.DeleteFunc(fx.docker.containers, func(c docker.Container) bool { return c.ID == "daemondaemondae0" })
	if _, err := a.Once(ctx, true); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(fx.fakes[firewall.IPv4].Dump(), "-m cgroup") {
		t.Fatalf("rule outlived its container:\n%s", fx.fakes[firewall.IPv4].Dump())
	}
}

// TestHostNetworkJoinerHasItsOwnRule: a container in a host-network
// container's namespace (--network container:<id>) is blocked by its own
// cgroup, not reported blocked on its owner's.
func TestHostNetworkJoinerHasItsOwnRule(t *testing.T) {
	fx := hostFixture(t, nil)
	fx.docker.containers = append(fx.docker.containers, docker.Container{ID: "sidecarsidecar00", Name: "sidecar", NetworkMode: "container:daemondaemondae0"})
	fx.insp["sidecarsidecar00"] = docker.Details{Pid: 50}
	fx.sys.(fakeSys).files["/proc/50/cgroup"] = "0::/ecstasks-0123.slice/docker-sidecar.scope\n"
	st, _ := fx.build(t).Once(context.Background(), true)
	if !strings.Contains(fx.fakes[firewall.IPv4].Dump(), `--path "/ecstasks-0123.slice/docker-sidecar.scope"`) {
		t.Fatalf("no rule of its own:\n%s", fx.fakes[firewall.IPv4].Dump())
	}
	for _, c := range st.Containers {
		if c.Name == "sidecar" && (!c.Protected || !strings.Contains(c.Reason, "(host network): host network: blocked")) {
			t.Fatalf("sidecar %+v", c)
		}
	}
	// Without its own rule (its cgroup unreadable from the start) it is
	// not blocked, whatever its owner is.
	fx = hostFixture(t, nil)
	fx.docker.containers = append(fx.docker.containers, docker.Container{ID: "sidecarsidecar00", Name: "sidecar", NetworkMode: "container:daemondaemondae0"})
	st, _ = fx.build(t).Once(context.Background(), true)
	for _, c := range st.Containers {
		if c.Name == "sidecar" && (c.Protected || !strings.Contains(c.Reason, "no rule of its own")) {
			t.Fatalf("sidecar without a rule: %+v", c)
		}
	}
}

// TestHostNetworkOffRemovesTheChain: --block-host-network turned off
// deletes IMDS-GUARD-HOST and its jump; check (which changes nothing)
// says the chain is still there.
func TestHostNetworkOffRemovesTheChain(t *testing.T) {
	fx := hostFixture(t, nil)
	ctx := context.Background()
	if _, err := fx.build(t).Once(ctx, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fx.fakes[firewall.IPv4].Dump(), "-A OUTPUT -j IMDS-GUARD-HOST") {
		t.Fatal("no host chain to start with")
	}
	fx.cfg.BlockHostNetwork = false
	st, err := fx.build(t).Once(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.HostNetwork.Enforcement, "still in place") || !strings.Contains(fx.fakes[firewall.IPv4].Dump(), firewall.HostChain) {
		t.Fatalf("check with the chain left: %q", st.HostNetwork.Enforcement)
	}
	st, err = fx.agent.Once(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []firewall.Family{firewall.IPv4, firewall.IPv6} {
		if d := fx.fakes[f].Dump(); strings.Contains(d, firewall.HostChain) {
			t.Fatalf("%s: host chain left after apply with blocking off:\n%s", f, d)
		}
	}
	if strings.Contains(st.HostNetwork.Enforcement, "still in place") || st.Verdict == status.VerdictExposed {
		t.Fatalf("after removal: %q %s", st.HostNetwork.Enforcement, st.Verdict)
	}
}

func TestHostNetworkUnavailableWithoutUnifiedCgroup(t *testing.T) {
	fx := hostFixture(t, errors.New("cgroup v2 is not the unified hierarchy"))
	st, _ := fx.build(t).Once(context.Background(), true)
	if !strings.HasPrefix(st.HostNetwork.Enforcement, "unavailable: cgroup v2 is not the unified hierarchy") {
		t.Fatalf("enforcement %q", st.HostNetwork.Enforcement)
	}
	if strings.Contains(fx.fakes[firewall.IPv4].Dump(), firewall.HostChain) {
		t.Fatal("host chain created without cgroup v2")
	}
	for _, c := range st.HostNetwork.Containers {
		if c.Blocked {
			t.Fatalf("%+v", c)
		}
	}
}

func TestCgroupPathParsing(t *testing.T) {
	for in, want := range map[string]string{
		"12:memory:/docker/abc\n0::/system.slice/docker-abc.scope\n": "/system.slice/docker-abc.scope",
		"0::/\n":                  "/",
		"1:name=systemd:/x\n":     "",
		"0::/a/b\n1:cpu:/ignored": "/a/b",
	} {
		got, _ := cgroupV2Path([]byte(in))
		if got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
	forbidden := []string{"/system.slice/imdsguard.service", "/init.scope"}
	for path, ok := range map[string]bool{
		"/system.slice/docker-x.scope":     true,
		"/":                                false,
		"/system.slice":                    false, // contains the agent
		"/system.slice/imdsguard.service":  false,
		"/init.scope/child":                true, // below PID 1's group, not containing it
		"/system.slice/imdsguard.services": true,
		"relative":                         false,
	} {
		if err := checkCgroup(path, forbidden); (err == nil) != ok {
			t.Errorf("%s: %v, want ok=%v", path, err, ok)
		}
	}
}

func TestNewFlags(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var c Config
	c.Bind(fs)
	if err := fs.Parse([]string{"--awsvpc-mode=enforce", "--block-host-network", "--exempt-task-family=a,b", "--exempt-task-family", "c"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(fs, func(k string) string {
		return map[string]string{"IMDSGUARD_EXEMPT_LABEL": "team/imds"}[k]
	}); err != nil {
		t.Fatal(err)
	}
	if c.AWSVPCMode != ECSModeEnforce || !c.BlockHostNetwork || !slices.Equal(c.ExemptTaskFamilies, []string{"a", "b", "c"}) || c.ExemptLabel != "team/imds" {
		t.Fatalf("%+v", c)
	}
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	c = Config{}
	c.Bind(fs)
	_ = fs.Parse([]string{"--awsvpc-mode=on"})
	if err := c.Finish(fs, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "awsvpc-mode") {
		t.Fatalf("bad mode: %v", err)
	}
	if c.ExemptLabel != DefaultExemptLabel {
		t.Fatalf("default label %q", c.ExemptLabel)
	}
}

// BenchmarkPass500 is one enforcing pass over 500 containers — 400
// bridged (10 exempt), 40 awsvpc tasks of a pause and an app, 20 host-network
// — with the fake firewall, namespaces and cgroups: the agent's own cost of
// the new features at scale, without iptables or netlink.
func BenchmarkPass500(b *testing.B) {
	fx := newFixture(b)
	fx.cfg.AWSVPCMode, fx.cfg.BlockHostNetwork, fx.cfg.ExemptLabel = ECSModeEnforce, true, ExampleExemptLabel
	ns := newFakeNS()
	sys := fakeSys{files: map[string]string{"/proc/self/cgroup": "0::/system.slice/imdsguard.service\n", "/proc/1/cgroup": "0::/init.scope\n"}}
	fx.insp = map[string]docker.Details{}
	for i := range 400 {
		c := docker.Container{ID: fmt.Sprintf("%064x", i), Name: fmt.Sprintf("web-%d", i), NetworkMode: "bridge",
			IPv4: []netip.Addr{netip.AddrFrom4([4]byte{172, 17, byte(i / 250), byte(i%250 + 2)})}}
		if i%40 == 0 {
			c.Labels = map[string]string{"imdsguard.allow-imds": "true"}
		}
		fx.docker.containers = append(fx.docker.containers, c)
	}
	for i := range 40 {
		pause := docker.Container{ID: fmt.Sprintf("p%063x", i), Name: fmt.Sprintf("task-%d-pause", i), NetworkMode: "none",
			Labels: map[string]string{docker.LabelTaskARN: fmt.Sprint("arn:task/", i)}}
		app := docker.Container{ID: fmt.Sprintf("a%063x", i), Name: fmt.Sprintf("task-%d-app", i), NetworkMode: "container:" + pause.ID}
		path := fmt.Sprintf("/var/run/docker/netns/%d", i)
		ns.routes[path] = &tasknet.NSRoutes{V4Blackhole: true}
		fx.insp[pause.ID] = docker.Details{Pid: 1000 + i, SandboxKey: path}
		fx.insp[app.ID] = docker.Details{Pid: 2000 + i}
		fx.docker.containers = append(fx.docker.containers, pause, app)
	}
	for i := range 20 {
		c := docker.Container{ID: fmt.Sprintf("h%063x", i), Name: fmt.Sprintf("hostd-%d", i), NetworkMode: "host"}
		fx.insp[c.ID] = docker.Details{Pid: 3000 + i}
		sys.files[fmt.Sprintf("/proc/%d/cgroup", 3000+i)] = fmt.Sprintf("0::/system.slice/docker-%d.scope\n", i)
		fx.docker.containers = append(fx.docker.containers, c)
	}
	fx.ns, fx.sys = ns, sys
	a := fx.build(b)
	ctx := context.Background()
	if _, err := a.Once(ctx, true); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := a.Once(ctx, true); err != nil {
			b.Fatal(err)
		}
	}
}
