package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// TestExemptWithoutBridgeNetfilter: Docker 27.3 and later no longer load
// br_netfilter, so iptables never sees a bridge port and layer 2's
// `-m physdev` ACCEPT never matches. The module is loaded on this machine
// and cannot be unloaded for one test; turning bridge-nf-call-ip(6)tables
// off in the sandbox's host namespace (per namespace since Linux 5.3) has
// the same effect on iptables. The exempt container must still read IMDS
// over both families (layer 1 marks its frames, layer 2 accepts the mark),
// a neighbour must not, and the status must not call it "blocked all the
// same".
func TestExemptWithoutBridgeNetfilter(t *testing.T) {
	forEachDocker(t, func(t *testing.T, opts sandbox.Options) {
		if strings.HasSuffix(opts.DockerRoot, "/trixie") {
			t.Skip("20.10 and 28 only: 26.1 adds nothing here")
		}
		e := newEnv(t, opts)
		s := e.s
		off := `for f in /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables; do
  if [ -e $f ]; then echo 0 > $f; fi
done
cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo absent`
		out, err := s.HostRun("sh", "-c", off)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("bridge-nf-call-iptables in the host namespace: %s", strings.TrimSpace(out))
		if err := s.CreateNetwork("nobrnf", "172.31.6.0/24", "fd00:ec2:d6::/64"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RunContainer("exempt", "--network", "nobrnf", "--label", agent.ExampleExemptLabel); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RunContainer("plain", "--network", "nobrnf"); err != nil {
			t.Fatal(err)
		}
		e.startAgent(t, "--exempt-label", agent.ExampleExemptLabel)
		var st *status.Status
		waitFor(t, "protected with the exemption applied", 30*time.Second, func() bool {
			s, err := status.QueryStatus(context.Background(), e.socket)
			if err != nil || s.Verdict != status.VerdictProtected || len(s.Exemptions) != 1 || !s.Exemptions[0].Applied {
				return false
			}
			st = s
			return true
		})
		if body, err := s.ReadIMDS("exempt"); err != nil || body != sandbox.InstanceID {
			t.Errorf("exempt container without bridge netfilter must read IMDS: %q %v", body, err)
		}
		if body, err := s.ReadIMDSv6("exempt"); err != nil || body != sandbox.InstanceID {
			t.Errorf("exempt container without bridge netfilter must read IMDS over IPv6: %q %v", body, err)
		}
		e.assertBlocked(t, "plain")
		for _, c := range st.Containers {
			if c.Name == "exempt" && strings.Contains(c.Reason, "blocked all the same") {
				t.Errorf("status: %s", c.Reason)
			}
		}
		if t.Failed() {
			rules, _ := s.HostRun("iptables-save", "-t", "filter")
			t.Logf("iptables:\n%s", rules)
		}
	})
}
