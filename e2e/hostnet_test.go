package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

// TestHostNetwork: a host-network container is reported exposed, by task
// and container name. With --block-host-network on a host where containers
// have their own cgroup v2 group it is blocked while the host namespace
// still reads IMDS; elsewhere the status says why it is not.
func TestHostNetwork(t *testing.T) {
	e := newEnv(t, sandbox.Options{CgroupV2: true})
	s := e.s
	arn := "arn:aws:ecs:us-east-1:123456789012:task/e2e/mon"
	args := append([]string{"--network", "host"}, ecsLabels(arn, "mon", "collector")...)
	if _, err := s.RunContainer("hostc", args...); err != nil {
		t.Fatal(err)
	}
	e.startAgent(t, "--block-host-network")
	var hc agent.HostContainer
	var st *agent.Status
	waitFor(t, "host-network container reported", 30*time.Second, func() bool {
		var err error
		st, err = agent.QueryStatus(context.Background(), e.socket)
		if err != nil || st.HostNetwork == nil || len(st.HostNetwork.Containers) != 1 || !st.Firewall.IPv4.Enforced {
			return false
		}
		hc = st.HostNetwork.Containers[0]
		return true
	})
	if hc.Name != "hostc" || hc.TaskARN != arn || hc.ECSContainer != "collector" {
		t.Fatalf("host container %+v", hc)
	}
	out, _ := e.cli(t, "status")
	t.Logf("imdsguard status:\n%s", out)

	if st.HostNetwork.Enforcement != "active" {
		// This machine's containers have no cgroup v2 group of their own
		// (cgroup v1 or hybrid): nothing can tell them from the host, so
		// the agent blocks nothing and says why.
		if !strings.HasPrefix(st.HostNetwork.Enforcement, "unavailable: ") || hc.Blocked {
			t.Fatalf("enforcement %q, container %+v", st.HostNetwork.Enforcement, hc)
		}
		if st.Verdict != agent.VerdictDegraded || !strings.Contains(out, "host network: blocking unavailable") {
			t.Fatalf("verdict %s; the status must say blocking is unavailable:\n%s", st.Verdict, out)
		}
		if rules, _ := s.HostRun("iptables-save", "-t", "filter"); strings.Contains(rules, "IMDS-GUARD-HOST") {
			t.Fatalf("host chain created without cgroup v2:\n%s", rules)
		}
		if body, err := s.ReadIMDS("hostc"); err != nil || body != sandbox.InstanceID {
			t.Fatalf("reported exposed, so it reads IMDS: %q %v", body, err)
		}
	}
	t.Run("blocked", func(t *testing.T) {
		if st.HostNetwork.Enforcement != "active" {
			t.Skipf("host-network blocking cannot run on this machine (%s); the cgroup match itself is tested against this kernel in firewall.TestKernelSpec, the rule and path logic in agent unit tests", st.HostNetwork.Enforcement)
		}
		waitFor(t, "host container blocked", 10*time.Second, func() bool {
			st := e.status(t)
			return st.HostNetwork.Containers[0].Blocked && st.Verdict == agent.VerdictProtected
		})
		if body, err := s.ReadIMDS("hostc"); err == nil {
			t.Fatalf("blocked host-network container reads IMDS: %q", body)
		}
		// The host itself (where the ECS agent runs) still reaches IMDS.
		if err := s.ProbeFromHost(sandbox.IMDSv4, 80, 3*time.Second); err != nil {
			t.Fatalf("the host namespace lost IMDS: %v", err)
		}
		if _, err := s.Docker("rm", "-f", "hostc"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "rule removed on die", 10*time.Second, func() bool {
			rules, _ := s.HostRun("iptables-save", "-t", "filter")
			return !strings.Contains(rules, "-m cgroup")
		})
	})
}
