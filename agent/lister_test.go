package agent

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// TestDaemonListsOnDockerEventsOnly: repairs and periodic syncs read the
// view; a Docker event lists again and the exemption follows; Docker going
// away withdraws it at once.
func TestDaemonListsOnDockerEventsOnly(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.ExemptLabel = ExampleExemptLabel
	ip := netip.MustParseAddr("172.30.0.10")
	exempt := docker.Container{ID: "aaaaaaaaaaaaaaaa", Name: "cw", NetworkMode: "appnet", IPv4: []netip.Addr{ip},
		Labels: map[string]string{"imdsguard.allow-imds": "true"}}
	fx.docker.containers = []docker.Container{exempt}
	accept := fx.exemptable(exempt, 7)
	v4 := fx.fakes[firewall.IPv4]
	fx.start(t)
	eventually(t, "the exemption", func() bool { return strings.Contains(v4.Dump(), accept) })
	changed := fx.watcher(t)

	// Docker stops answering: a listing still in flight from the start
	// (the lister's first run and the watch's trigger may or may not
	// coalesce) cannot complete, so any listing counted is the repair's.
	hang := make(chan struct{})
	fx.docker.mu.Lock()
	fx.docker.hang = hang
	fx.docker.mu.Unlock()
	lists := fx.docker.listCalls()
	v4.Flush(firewall.Forward)
	changed()
	eventually(t, "repair", func() bool { return fx.agent.Status().Repairs == 1 })
	if got := fx.docker.listCalls(); got != lists {
		t.Fatalf("a repair listed the containers %d times", got-lists)
	}
	fx.docker.mu.Lock()
	fx.docker.hang = nil
	fx.docker.mu.Unlock()
	close(hang)
	if st := fx.agent.Status(); st.Docker.ListedAt.IsZero() || !st.Docker.Reachable {
		t.Fatalf("docker status %+v", st.Docker)
	}

	// The exempt container stops and another gets its address.
	fx.docker.mu.Lock()
	fx.docker.containers = []docker.Container{{ID: "bbbbbbbbbbbbbbbb", Name: "other", NetworkMode: "appnet", IPv4: []netip.Addr{ip}}}
	fx.docker.mu.Unlock()
	fx.docker.event(t)
	eventually(t, "the exemption withdrawn", func() bool { return !strings.Contains(v4.Dump(), accept) })

	// It comes back; then Docker goes away.
	fx.docker.mu.Lock()
	fx.docker.containers = []docker.Container{exempt}
	fx.docker.mu.Unlock()
	fx.docker.event(t)
	eventually(t, "the exemption again", func() bool { return strings.Contains(v4.Dump(), accept) })
	fx.docker.disconnect(t, errors.New("docker event stream ended"))
	eventually(t, "the exemption withdrawn with Docker gone", func() bool { return !strings.Contains(v4.Dump(), accept) })
	// The chain changes mid-sync; the status is published at its end.
	eventually(t, "the status of that sync", func() bool { return fx.agent.Status().Docker.Error != "" })
	if st := fx.agent.Status(); st.Docker.Reachable || st.Verdict == status.VerdictProtected {
		t.Fatalf("verdict %s, docker %+v", st.Verdict, st.Docker)
	}
}
