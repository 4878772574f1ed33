package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

// TestExemptions: a labeled container reads IMDS, an unlabeled one on the
// same network does not; a container that gets the labeled one's addresses
// after it stops is blocked at once.
func TestExemptions(t *testing.T) {
	e := newEnv(t, sandbox.Options{})
	s := e.s
	if err := s.CreateNetwork("exnet", "172.31.5.0/24", "fd00:ec2:d5::/64"); err != nil {
		t.Fatal(err)
	}
	ip4, ip6 := "172.31.5.10", "fd00:ec2:d5::10"
	if _, err := s.RunContainer("cwagent", "--network", "exnet", "--ip", ip4, "--ip6", ip6, "--label", agent.ExampleExemptLabel); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("plain", "--network", "exnet"); err != nil {
		t.Fatal(err)
	}
	xray := append([]string{"--network", "exnet"}, ecsLabels("arn:aws:ecs:us-east-1:123456789012:task/e2e/xray", "xray", "xray-daemon")...)
	if _, err := s.RunContainer("xray", xray...); err != nil {
		t.Fatal(err)
	}
	e.startAgent(t, "--exempt-task-family", "xray")
	st := e.waitProtected(t)
	if len(st.Exemptions) != 2 {
		t.Fatalf("exemptions %+v", st.Exemptions)
	}
	for _, c := range []string{"cwagent", "xray"} {
		if body, err := s.ReadIMDS(c); err != nil || body != sandbox.InstanceID {
			t.Fatalf("exempt %s must read IMDS: %q %v", c, body, err)
		}
	}
	if body, err := s.ReadIMDSv6("cwagent"); err != nil || body != sandbox.InstanceID {
		t.Fatalf("exempt cwagent must read IMDS over IPv6: %q %v", body, err)
	}
	e.assertBlocked(t, "plain")
	out, _ := e.cli(t, "status")
	t.Logf("imdsguard status:\n%s", out)
	if !strings.Contains(out, "exemption: cwagent exempt (label "+agent.ExampleExemptLabel+") for "+ip4+", "+ip6) {
		t.Fatalf("status does not list the exemption:\n%s", out)
	}

	// Stop the labeled container and start another with its addresses,
	// straight away: the exemption must be gone before the new one can use
	// them.
	if _, err := s.Docker("rm", "-f", "cwagent"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("reuse", "--network", "exnet", "--ip", ip4, "--ip6", ip6); err != nil {
		t.Fatal(err)
	}
	if body, err := s.ReadIMDS("reuse"); err == nil {
		t.Fatalf("a container on a dead exempt container's address reads IMDS: %q", body)
	}
	e.assertBlocked(t, "reuse")
	for _, bin := range []string{"iptables-save", "ip6tables-save"} {
		rules, _ := s.HostRun(bin, "-t", "filter")
		if strings.Contains(rules, ip4+"/32") || strings.Contains(rules, ip6+"/128") {
			t.Fatalf("%s still exempts the address:\n%s", bin, rules)
		}
	}
	waitFor(t, "status without the exemption", 10*time.Second, func() bool {
		st, err := agent.QueryStatus(context.Background(), e.socket)
		return err == nil && len(st.Exemptions) == 1 && st.Exemptions[0].Name == "xray"
	})
	if st := e.status(t); st.Repairs != 0 {
		t.Fatalf("exemption changes counted as %d repairs", st.Repairs)
	}
}
