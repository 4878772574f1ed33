package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// agentBin is built once by TestMain.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imdsguard-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	agentBin = filepath.Join(dir, "imdsguard")
	out, err := buildStatic(agentBin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "building imdsguard: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildStatic builds the agent without cgo: the same binary then runs on
// the machine and inside the Docker roots (RootExec), whatever their libc.
func buildStatic(out string) ([]byte, error) {
	cmd := exec.Command("go", "build", "-o", out, "../cmd/imdsguard")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}

// env is one simulated instance with the agent's files.
type env struct {
	s        *sandbox.Sandbox
	hostRoot string
	socket   string
	agent    *sandbox.Process
}

func newEnv(t *testing.T, opts sandbox.Options) *env {
	t.Helper()
	if opts.DockerRoot != "" {
		opts.Binds = append(opts.Binds, filepath.Dir(agentBin))
	}
	s := sandbox.NewT(t, opts)
	e := &env{s: s, hostRoot: filepath.Join(s.Dir, "hostroot"), socket: filepath.Join(s.Dir, "imdsguard.sock")}
	removeLockFile(t, s)
	if err := os.MkdirAll(filepath.Join(e.hostRoot, "etc/ecs"), 0o755); err != nil {
		t.Fatal(err)
	}
	// An ECS host that asks for the awsvpc block, so the verdict can be
	// "protected" when the firewall is right.
	if err := os.WriteFile(filepath.Join(e.hostRoot, "etc/ecs/ecs.config"), []byte("ECS_CLUSTER=e2e\nECS_AWSVPC_BLOCK_IMDS=true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// startTwoContainers starts "onbridge" on the default bridge and
// "onappnet" on a user-defined IPv6 network, and checks that, with nothing
// blocking yet, a container reads IMDS.
func (e *env) startTwoContainers(t *testing.T) {
	t.Helper()
	s := e.s
	if _, err := s.RunContainer("onbridge"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateNetwork("appnet", "172.30.0.0/24", "fd00:ec2:d1::/64"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("onappnet", "--network", "appnet"); err != nil {
		t.Fatal(err)
	}
	if body, err := s.ReadIMDS("onbridge"); err != nil || body != sandbox.InstanceID {
		t.Fatalf("before the agent, a container must read IMDS: %q %v", body, err)
	}
}

// flags are the settings every agent command in a sandbox needs.
func (e *env) flags() []string {
	return []string{"--docker-host", e.s.DockerHost, "--status-socket", e.socket, "--host-root", e.hostRoot}
}

func (e *env) startAgent(t *testing.T, extra ...string) {
	t.Helper()
	args := append([]string{"run"}, e.flags()...)
	args = append(args, "--metrics-addr", "127.0.0.1:9721", "--log-format", "json", "--log-level", "debug")
	args = append(args, extra...)
	p, err := e.s.StartProcess("imdsguard", agentBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	e.agent = p
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log (tail):\n%s", tailLines(p.Log(), 40))
		}
	})
}

// cli runs an imdsguard command in the host namespace.
func (e *env) cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args = append(args, e.flags()...)
	cmd := e.s.HostCommand(ctx, agentBin, args...)
	out, err := cmd.Output()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out) + string(ee.Stderr), ee.ExitCode()
	}
	t.Fatalf("imdsguard %v: %v", args, err)
	return "", -1
}

func (e *env) status(t *testing.T) *status.Status {
	t.Helper()
	st, err := status.QueryStatus(context.Background(), e.socket)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}

// waitFor polls cond; the deadline bounds a hung test and is no performance
// claim (those live in bench/).
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) waitProtected(t *testing.T) *status.Status {
	t.Helper()
	var st *status.Status
	waitFor(t, "verdict protected", 30*time.Second, func() bool {
		s, err := status.QueryStatus(context.Background(), e.socket)
		st = s
		return err == nil && s.Verdict == status.VerdictProtected
	})
	return st
}

// assertBlocked checks that containers reach neither IMDS address while the
// neighbours still answer.
func (e *env) assertBlocked(t *testing.T, containers ...string) {
	t.Helper()
	for _, c := range containers {
		if err := e.s.Probe(c, sandbox.IMDSv4, 80, 2*time.Second); !errors.Is(err, sandbox.ErrTimeout) {
			t.Errorf("%s: IMDS over IPv4: want no answer, got %v", c, err)
		}
		if err := e.s.Probe(c, sandbox.IMDSv6, 80, 2*time.Second); !errors.Is(err, sandbox.ErrTimeout) {
			t.Errorf("%s: IMDS over IPv6: want no answer, got %v", c, err)
		}
		for _, n := range sandbox.Neighbours {
			if err := e.s.Probe(c, n.Addr, n.Port, 3*time.Second); err != nil {
				t.Errorf("%s: neighbour %s (%s) must stay reachable: %v", c, n.Name, n.Addr, err)
			}
		}
	}
}

// protectedOutside reads the host namespace's ruleset with the backend's own
// iptables-save, independently of the agent, and says whether the block is
// whole for one family.
func (e *env) protectedOutside(family string) bool {
	bin := "iptables-save"
	if family == "ipv6" {
		bin = "ip6tables-save"
	}
	out, err := e.s.HostRun(bin, "-t", "filter")
	return err == nil && protectedIn(out, family)
}

// protectedIn says whether one family's `iptables-save -t filter` output
// holds the whole block: our jump as rule 1 of FORWARD and, while Docker's
// DOCKER-USER exists, as rule 1 there too.
func protectedIn(out, family string) bool {
	imds := "-A IMDS-GUARD -d 169.254.169.254/32 -j DROP"
	if family == "ipv6" {
		imds = "-A IMDS-GUARD -d fd00:ec2::254/128 -j DROP"
	}
	var fwd, du []string
	guard, user := false, false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, ":DOCKER-USER "):
			user = true
		case strings.HasPrefix(l, "-A FORWARD "):
			fwd = append(fwd, l)
		case strings.HasPrefix(l, "-A DOCKER-USER "):
			du = append(du, l)
		case l == imds:
			guard = true
		}
	}
	return guard && len(fwd) > 0 && fwd[0] == "-A FORWARD -j IMDS-GUARD" && (!user || len(du) > 0 && du[0] == "-A DOCKER-USER -j IMDS-GUARD")
}

// drift is one way the field breaks the firewall, as the shell command an
// operator or a service would run in the host namespace.
type drift struct {
	name   string
	family string
	script string
}

var drifts = []drift{
	{"iptables -F DOCKER-USER", "ipv4", "iptables -F DOCKER-USER"},
	{"delete the DOCKER-USER jump", "ipv4", "iptables -D DOCKER-USER -j IMDS-GUARD"},
	{"iptables -F FORWARD", "ipv4", "iptables -F FORWARD"},
	{"delete the FORWARD jump", "ipv4", "iptables -D FORWARD -j IMDS-GUARD"},
	// Docker's EnsureJumpRule (its start, a firewalld reload): its jump
	// back on top, ours rule 2. (After -F FORWARD Docker's jump is gone
	// until Docker's next start: imdsguard repairs only its own.)
	{"Docker's jump re-inserted", "ipv4", "iptables -C FORWARD -j DOCKER-USER 2>/dev/null && iptables -D FORWARD -j DOCKER-USER; iptables -I FORWARD -j DOCKER-USER"},
	// What `systemctl restart iptables` does with a saved file that lacks
	// the rule: a full restore of the table.
	{"iptables-restore without the rule", "ipv4", "iptables-save -t filter | grep -v IMDS-GUARD | iptables-restore"},
	// One transaction: as separate commands the agent repairs the first
	// before the -X runs, and the -X then fails on a referenced chain.
	{"chain removed (-X)", "ipv4", `printf '*filter\n-D FORWARD -j IMDS-GUARD\n-F DOCKER-USER\n-F IMDS-GUARD\n-X IMDS-GUARD\nCOMMIT\n' | iptables-restore --noflush`},
	// Docker 20.10 has no ip6tables DOCKER-USER, and imdsguard creates none.
	{"ip6tables -F FORWARD", "ipv6", "ip6tables -F FORWARD"},
}

func TestAgent(t *testing.T) { forEachBackend(t, testAgent) }

func testAgent(t *testing.T, opts sandbox.Options) {
	backend := opts.Backend
	e := newEnv(t, opts)
	s := e.s
	e.startTwoContainers(t)

	// On legacy the periodic resync is the only drift detection.
	resync := 5 * time.Second
	if backend == sandbox.BackendLegacy {
		resync = time.Second
	}
	e.startAgent(t, "--resync-interval", resync.String())
	st := e.waitProtected(t)
	if st.Firewall.Backend != string(backend) {
		t.Fatalf("agent uses iptables-%s, dockerd uses %s", st.Firewall.Backend, backend)
	}
	e.assertBlocked(t, "onbridge", "onappnet")
	if _, err := s.ReadIMDS("onbridge"); err == nil {
		t.Fatal("container still reads IMDS")
	}

	// The one-shot commands agree with the daemon.
	out, code := e.cli(t, "check", "--json")
	var chk status.Status
	if err := json.Unmarshal([]byte(out), &chk); err != nil || code != 0 || chk.Verdict != status.VerdictProtected {
		t.Fatalf("check --json: exit %d, verdict %q, err %v\n%s", code, chk.Verdict, err, out)
	}
	if !chk.ECSConfig.AWSVPCBlockIMDS || !chk.Firewall.IPv4.Enforced || !chk.Firewall.IPv6.Enforced {
		t.Fatalf("check --json fields: %+v", chk)
	}
	names := []string{}
	for _, c := range chk.Containers {
		names = append(names, c.Name)
		if !c.Protected {
			t.Errorf("container %s not protected: %s", c.Name, c.Reason)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"onappnet", "onbridge"}) {
		t.Errorf("containers %v", names)
	}
	out, code = e.cli(t, "status", "--all")
	if code != 0 || !strings.Contains(out, "PROTECTED") || !strings.Contains(out, "onappnet") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	t.Logf("imdsguard status:\n%s", out)

	// Drift, repeatedly, timed from outside the agent.
	reps := 20
	bound := 5 * time.Second
	if backend == sandbox.BackendLegacy {
		reps, bound = 2, resync+5*time.Second
	}
	before := e.status(t).Repairs
	n := 0
	for _, d := range drifts {
		var lat []time.Duration
		for range reps {
			if _, err := s.HostRun("sh", "-c", d.script); err != nil {
				t.Fatalf("%s: %v", d.name, err)
			}
			start := time.Now()
			waitFor(t, "repair after "+d.name, bound, func() bool { return e.protectedOutside(d.family) })
			lat = append(lat, time.Since(start))
			n++
		}
		slices.Sort(lat)
		t.Logf("%s: %s repaired in median %v, max %v (%d runs; poll resolution ≈ one iptables-save)",
			backend, d.name, lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), reps)
	}
	waitFor(t, "repairs counted", 10*time.Second, func() bool { return e.status(t).Repairs-before >= uint64(n) })
	t.Logf("repairs: %d for %d drifts", e.status(t).Repairs-before, n)
	e.assertBlocked(t, "onbridge")

	// Metrics tell the same story, from the host namespace.
	metrics, err := s.HostRun("sh", "-c", `printf 'GET /metrics HTTP/1.0\r\n\r\n' | busybox nc 127.0.0.1 9721`)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	for _, want := range []string{
		`imdsguard_rule_present{family="ipv4"} 1`,
		`imdsguard_rule_present{family="ipv6"} 1`,
		`imdsguard_verdict{verdict="protected"} 1`,
		`imdsguard_repairs_total{family="ipv4",reason="jump_missing"}`,
		`imdsguard_containers{network_mode="user-defined",protected="true"} 1`,
		`imdsguard_ecs_awsvpc_block_imds 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// Layer 1 drops ahead of iptables (forward priority -200), so the
	// iptables chain counts only what reached it; one of the two moves.
	if strings.Contains(metrics, `imdsguard_blocked_packets_total{family="ipv4"} 0`) &&
		(strings.Contains(metrics, "imdsguard_nftables_blocked_packets_total 0") || !strings.Contains(metrics, "imdsguard_nftables_blocked_packets_total")) {
		t.Error("no blocked packet counter moved after blocked probes")
	}

	// A dockerd restart: the agent reconnects, resyncs, and new containers
	// are blocked.
	if err := s.RestartDockerd(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("afterrestart"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "resync after dockerd restart", 30*time.Second, func() bool {
		st := e.status(t)
		for _, c := range st.Containers {
			if c.Name == "afterrestart" {
				return st.Docker.Reachable && st.Verdict == status.VerdictProtected
			}
		}
		return false
	})
	if !e.protectedOutside("ipv4") || !e.protectedOutside("ipv6") {
		t.Fatal("block not in place after dockerd restart")
	}
	e.assertBlocked(t, "afterrestart")

	// Fail closed: stopping the daemon leaves the rules.
	if err := e.agent.Stop(10 * time.Second); err != nil {
		t.Fatalf("stopping the agent: %v", err)
	}
	if !e.protectedOutside("ipv4") || !e.protectedOutside("ipv6") {
		t.Fatal("rules gone after SIGTERM")
	}
	e.assertBlocked(t, "afterrestart")

	// remove takes away exactly what imdsguard owns.
	if out, code := e.cli(t, "remove"); code != 0 {
		t.Fatalf("remove: exit %d\n%s", code, out)
	}
	rules, _ := s.HostRun("iptables-save", "-t", "filter")
	if strings.Contains(rules, "IMDS-GUARD") || !strings.Contains(rules, ":DOCKER-USER") || strings.Count(rules, "-A FORWARD -j DOCKER-USER\n") != 1 {
		t.Fatalf("after remove (Docker's chain and its one jump stay):\n%s", rules)
	}
	if body, err := s.ReadIMDS("afterrestart"); err != nil || body != sandbox.InstanceID {
		t.Fatalf("after remove a container reads IMDS again: %q %v", body, err)
	}
	if _, code := e.cli(t, "check"); code != 1 {
		t.Fatalf("check after remove: exit %d, want 1", code)
	}
}

// TestAgentBeforeDocker covers the boot order the boothook produces, and
// moby#48560: DOCKER-USER exists before dockerd starts (AWS's recipe creates
// it from a boothook; imdsguard never does), so dockerd may not add its
// FORWARD jump. imdsguard's own FORWARD jump blocks either way.
func TestAgentBeforeDocker(t *testing.T) {
	forEachBackend(t, func(t *testing.T, opts sandbox.Options) {
		opts.NoDockerd = true
		e := newEnv(t, opts)
		if _, err := e.s.HostRun("iptables", "-N", "DOCKER-USER"); err != nil {
			t.Fatal(err)
		}
		if out, code := e.cli(t, "apply"); code != 0 {
			t.Fatalf("apply without Docker: exit %d\n%s", code, out)
		}
		for _, bin := range []string{"iptables-save", "ip6tables-save"} {
			if rules, _ := e.s.HostRun(bin, "-t", "filter"); strings.Contains(rules, "-j DOCKER-USER") || bin == "ip6tables-save" && strings.Contains(rules, "DOCKER-USER") {
				t.Fatalf("apply wrote Docker's rules (%s):\n%s", bin, rules)
			}
		}
		if !e.protectedOutside("ipv4") || !e.protectedOutside("ipv6") {
			t.Fatal("apply did not put the block in place")
		}
		e.startAgent(t, "--resync-interval", "1s")
		waitFor(t, "daemon up", 20*time.Second, func() bool {
			st, err := status.QueryStatus(context.Background(), e.socket)
			return err == nil && st.LastSync != nil && st.Firewall.IPv4.Enforced && !st.Docker.Reachable
		})
		if st := e.status(t); st.Verdict != status.VerdictDegraded {
			t.Fatalf("with Docker down the verdict must be degraded, not %s", st.Verdict)
		}
		if err := e.s.StartDockerd(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := e.s.RunContainer("first"); err != nil {
			t.Fatal(err)
		}
		e.waitProtected(t)
		e.assertBlocked(t, "first")
	})
}

// TestCheckBadInput: one clear line and a non-zero exit, nothing written.
func TestCheckBadInput(t *testing.T) {
	e := newEnv(t, sandbox.Options{})
	if err := os.WriteFile(filepath.Join(e.hostRoot, "etc/ecs/ecs.config.json"), []byte("{broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := e.cli(t, "check")
	if code != 2 || !strings.Contains(out, "ecs.config.json") {
		t.Fatalf("malformed JSON: exit %d\n%s", code, out)
	}
	out, code = e.cli(t, "check", "--action", "allow")
	if code != 2 || !strings.Contains(out, "invalid action") {
		t.Fatalf("bad flag: exit %d\n%s", code, out)
	}
	if rules, _ := e.s.HostRun("iptables-save", "-t", "filter"); strings.Contains(rules, "IMDS-GUARD") {
		t.Fatal("check wrote rules")
	}
	out, code = e.cli(t, "status")
	if code != 2 || !strings.Contains(out, "no imdsguard daemon") {
		t.Fatalf("status with no daemon: exit %d\n%s", code, out)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
