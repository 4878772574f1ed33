package e2e

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// TestNFTablesLayer: imdsguard's own nftables tables hold the block on
// their own. Everything an operator or a service does to iptables, and
// `nft flush ruleset`, leaves bridged containers without an answer from
// IMDS (v4 and v6) while the neighbours and an exempt container answer;
// after SIGTERM the tables stay (owner+persist) and still block with
// every iptables rule gone; `imdsguard remove` deletes them.
func TestNFTablesLayer(t *testing.T) { forEachBackend(t, testNFTablesLayer) }

func testNFTablesLayer(t *testing.T, opts sandbox.Options) {
	e := newEnv(t, opts)
	s := e.s
	if _, err := s.RunContainer("onbridge"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateNetwork("nftnet", "172.31.7.0/24", "fd00:ec2:d7::/64"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("onnftnet", "--network", "nftnet"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("exempt", "--network", "nftnet", "--label", agent.ExampleExemptLabel); err != nil {
		t.Fatal(err)
	}
	e.startAgent(t, "--exempt-label", agent.ExampleExemptLabel)
	st := e.waitProtected(t)
	n := st.Firewall.NFTables
	if n == nil || !n.Present || !n.Owned || n.SurvivesFlush != "yes" || n.SurvivesStop != "yes" {
		t.Fatalf("nftables layer: %+v", n)
	}
	if len(n.Skipped) != 0 {
		t.Fatalf("exemption not applied in layer 1: %q", n.Skipped)
	}
	out, _ := e.cli(t, "status")
	t.Logf("imdsguard status:\n%s", out)
	if !strings.Contains(out, "survives nft flush: yes; survives agent stop: yes") {
		t.Fatalf("status text lacks the layer-1 guarantees:\n%s", out)
	}
	ruleset, _ := s.HostRun("nft", "list", "table", "bridge", "imdsguard")
	t.Logf("bridge imdsguard:\n%s", ruleset)

	exemptReads := func(when string) {
		t.Helper()
		if body, err := s.ReadIMDS("exempt"); err != nil || body != sandbox.InstanceID {
			t.Fatalf("%s: exempt container must read IMDS: %q %v", when, body, err)
		}
		if body, err := s.ReadIMDSv6("exempt"); err != nil || body != sandbox.InstanceID {
			t.Fatalf("%s: exempt container must read IMDS over IPv6: %q %v", when, body, err)
		}
	}
	exemptReads("both layers")

	// Drift while the agent runs: the probes go out right after the
	// drift, before anything could be repaired. Layer 1 is not touched by
	// any of it, so nothing of it is rebuilt.
	for _, d := range []string{
		// Our jumps are in FORWARD (and DOCKER-USER, which Docker 20.10
		// has for IPv4 only).
		"iptables -F FORWARD; iptables -F DOCKER-USER; ip6tables -F FORWARD",
		"nft flush ruleset",
	} {
		if out, err := s.HostRun("sh", "-c", d); err != nil {
			t.Fatalf("%s: %v %s", d, err, out)
		}
		e.assertBlocked(t, "onbridge", "onnftnet")
		if out, err := s.HostRun("nft", "list", "table", "inet", "imdsguard"); err != nil {
			t.Fatalf("after %s the table is gone: %v %s", d, err, out)
		}
	}
	exemptReads("after the drifts")

	// SIGTERM, then every iptables rule goes: layer 1 alone still blocks.
	if err := e.agent.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.agent.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not stop on SIGTERM")
	}
	if out, err := s.HostRun("sh", "-c", "iptables -F; ip6tables -F"); err != nil {
		t.Fatalf("iptables -F: %v %s", err, out)
	}
	e.assertBlocked(t, "onbridge", "onnftnet")
	exemptReads("agent stopped, iptables flushed")
	out, code := e.cli(t, "check", "--json")
	t.Logf("check after stop (exit %d): %s", code, tailLines(out, 3))

	// remove: the orphaned tables go, and IMDS answers again.
	if out, code := e.cli(t, "remove"); code != 0 {
		t.Fatalf("remove: exit %d %s", code, out)
	}
	for _, fam := range []string{"inet", "bridge"} {
		if out, err := s.HostRun("nft", "list", "table", fam, "imdsguard"); err == nil {
			t.Fatalf("table %s imdsguard left after remove:\n%s", fam, out)
		}
	}
	if body, err := s.ReadIMDS("onbridge"); err != nil || body != sandbox.InstanceID {
		t.Fatalf("after remove a container reads IMDS again: %q %v", body, err)
	}
}

// TestNFTablesLayerInTask: in --awsvpc-mode enforce each task namespace
// gets the owned table too. With the agent frozen (SIGSTOP: its socket
// still owns the table, but nothing repairs anything), a process in the
// task with NET_ADMIN runs `nft flush ruleset`, tries to delete the table,
// deletes every route and rule to IMDS and routes around them with a
// policy rule of its own: IMDS stays unreachable, its neighbours answer.
// (After a real stop the table stays but is orphaned, and such a process
// could flush it: the routes imdsguard left are then what holds.)
func TestNFTablesLayerInTask(t *testing.T) {
	e := newEnv(t, sandbox.Options{})
	s := e.s
	task := newSimTask(t, s, "nfttask", 3, false)
	app := "nfttask-app"
	args := append([]string{"--network", "container:" + task.pause, "--cap-add", "NET_ADMIN"}, ecsLabels("arn:aws:ecs:us-east-1:123456789012:task/e2e/nfttask", "nfttask", "app")...)
	if _, err := s.RunContainer(app, args...); err != nil {
		t.Fatal(err)
	}
	// The path the bypass below takes is real: before the agent the task
	// reads IMDS through it.
	if body, err := s.ReadIMDS(app); err != nil || body != sandbox.InstanceID {
		t.Fatalf("before the agent the task must read IMDS: %q %v", body, err)
	}
	e.startAgent(t, "--awsvpc-mode", "enforce")
	waitFor(t, "the task's table", 30*time.Second, func() bool {
		st, err := status.QueryStatus(context.Background(), e.socket)
		if err != nil || st.AWSVPC == nil || len(st.AWSVPC.Tasks) != 1 {
			return false
		}
		n := st.AWSVPC.Tasks[0].NFTables
		return n != nil && n.Present && n.Owned
	})
	if err := e.agent.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.agent.Signal(syscall.SIGCONT) })
	imdsSide := "192.0.2.13" // newSimTask's address for n = 3
	nsRun(t, task.netnsPath, "nft", "flush", "ruleset")
	del := nsRunErr(task.netnsPath, "nft", "delete", "table", "inet", "imdsguard")
	if !strings.Contains(del, "Operation not permitted") {
		t.Fatalf("nft delete table inside the task: %s", del)
	}
	// Every rule and route to IMDS goes (imdsguard's guard rule and the
	// blackhole), then a way of its own.
	nsRun(t, task.netnsPath, "sh", "-c", "while ip rule del to 169.254.169.254 2>/dev/null; do :; done; "+
		"ip route del blackhole 169.254.169.254/32 2>/dev/null; "+
		"ip route add 169.254.169.254/32 via "+imdsSide+" dev eth1 table 100 && ip rule add to 169.254.169.254 lookup 100 priority 1")
	t.Logf("task rules and route to IMDS:\n%s%s", nsRun(t, task.netnsPath, "ip", "rule"), nsRun(t, task.netnsPath, "ip", "route", "get", "169.254.169.254"))
	if err := s.Probe(app, sandbox.IMDSv4, 80, 2*time.Second); !errors.Is(err, sandbox.ErrTimeout) {
		t.Fatalf("agent frozen, ruleset flushed and routed around inside the task: want no answer, got %v", err)
	}
	e.assertNeighbours(t, app, false)
	if out := nsRun(t, task.netnsPath, "nft", "list", "table", "inet", "imdsguard"); !strings.Contains(out, "drop") {
		t.Fatalf("task table:\n%s", out)
	}
}

// nsRunErr runs a command in the namespace at path and returns its output,
// failing or not.
func nsRunErr(path string, args ...string) string {
	out, _ := exec.Command("nsenter", append([]string{"--net=" + path, "--"}, args...)...).CombinedOutput()
	return string(out)
}
