package agent

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// TestFirewalldSignalTriggersRepair: on iptables-legacy firewalld's signal
// is the only prompt word of a wipe; with the nf_tables watch silent and
// the resync an hour away, the signal alone must bring the block back.
func TestFirewalldSignalTriggersRepair(t *testing.T) {
	fx := newFixture(t)
	fx.docker.containers = []docker.Container{{ID: "aaaaaaaaaaaaaaaa", Name: "web", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.2")}}}
	signals := make(chan func(), 1)
	var a *Agent
	fx.start(t, func(ag *Agent) {
		a = ag
		a.watchFirewalld = func(ctx context.Context, changed func()) error {
			signals <- changed
			<-ctx.Done()
			return nil
		}
	})
	eventually(t, "first sync", func() bool { return a.Status().Verdict == status.VerdictProtected })
	var reloaded func()
	select {
	case reloaded = <-signals:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent never followed firewalld")
	}
	// firewalld's reload wiped the table; only its signal says so.
	fx.fakes[firewall.IPv4].Reset()
	fx.fakes[firewall.IPv6].Reset()
	reloaded()
	eventually(t, "repair after the signal", func() bool { return a.Status().Repairs > 0 && a.Status().Verdict == status.VerdictProtected })
}
