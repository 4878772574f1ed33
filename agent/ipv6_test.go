package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// TestNoIPv6KernelBecomesReady: on a kernel without IPv6 (the probe says
// so) the daemon enforces IPv4, becomes ready, never touches ip6tables,
// and reports the IPv6 block not applicable rather than missing.
func TestNoIPv6KernelBecomesReady(t *testing.T) {
	fx := newFixture(t)
	fx.ipv6 = func() string { return "the kernel has no IPv6 (test)" }
	fx.docker.containers = []docker.Container{{ID: "c1", Name: "web", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.2")}}}
	fx.start(t)
	eventually(t, "ready", func() bool { return fx.ready.Load() == 1 })
	st := fx.agent.Status()
	v6 := st.Firewall.IPv6
	if st.Verdict != status.VerdictProtected || !st.BlockInPlace() || v6.NotApplicable == "" || v6.Enforced {
		t.Fatalf("verdict %s %v, ipv6 %+v", st.Verdict, st.Reasons, v6)
	}
	if d := fx.fakes[firewall.IPv6].Dump(); strings.Contains(d, "IMDS-GUARD") {
		t.Fatalf("ip6tables was written on a kernel without IPv6:\n%s", d)
	}
	var b strings.Builder
	st.WriteText(&b)
	if !strings.Contains(b.String(), "ipv6 not applicable") {
		t.Fatalf("status text:\n%s", b.String())
	}
}
