package agent

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/firewall"
)

func TestViewSetSaysWhenToSync(t *testing.T) {
	web := Container{ID: "a", Name: "web", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.2")}}
	moved := web
	moved.IPv4 = []netip.Addr{netip.MustParseAddr("172.17.0.3")}
	down, refused := errors.New("docker down"), errors.New("connection refused")
	v := newContainerView()
	for _, step := range []struct {
		what  string
		list  []Container
		err   error
		event bool
		sync  bool
	}{
		{"first listing", []Container{web}, nil, false, true},
		{"the same, periodic", []Container{web}, nil, false, false},
		{"the same after an event (a restart keeps ID and address)", []Container{web}, nil, true, true},
		{"an address changed", []Container{moved}, nil, false, true},
		{"Docker fails", []Container{moved}, down, false, true},
		{"fails the same way", nil, down, false, false},
		{"fails another way", nil, refused, false, true},
		{"answers again", []Container{moved}, nil, false, true},
		{"a container left", nil, nil, false, true},
	} {
		if got := v.set(step.list, step.err, time.Now(), time.Millisecond, step.event); got != step.sync {
			t.Errorf("%s: sync %v, want %v", step.what, got, step.sync)
		}
		l := v.get(context.Background(), time.Hour)
		if step.err != nil && len(l.containers) != 0 {
			t.Errorf("%s: a failed listing kept %d containers", step.what, len(l.containers))
		}
	}
}

func TestViewRefusesAStaleListing(t *testing.T) {
	v := newContainerView()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if l := v.get(ctx, time.Hour); !errors.Is(l.err, errNotListed) {
		t.Fatalf("before the first listing: %v", l.err)
	}
	v.set([]Container{{ID: "a"}}, nil, time.Now().Add(-time.Minute), time.Millisecond, false)
	l := v.get(context.Background(), 30*time.Second)
	if l.err == nil || len(l.containers) != 0 {
		t.Fatalf("a minute-old listing was served: %+v", l)
	}
}

// TestDaemonListsOnDockerEventsOnly: repairs and periodic syncs read the
// view; a Docker event lists again and the exemption follows; Docker going
// away withdraws it at once.
func TestDaemonListsOnDockerEventsOnly(t *testing.T) {
	fx := newFixture(t)
	fx.cfg.ExemptLabel = ExampleExemptLabel
	ip := netip.MustParseAddr("172.30.0.10")
	exempt := Container{ID: "aaaaaaaaaaaaaaaa", Name: "cw", NetworkMode: "appnet", IPv4: []netip.Addr{ip},
		Labels: map[string]string{"imdsguard.allow-imds": "true"}}
	fx.docker.containers = []Container{exempt}
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
	v4.Flush(firewall.DockerUser)
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
	fx.docker.containers = []Container{{ID: "bbbbbbbbbbbbbbbb", Name: "other", NetworkMode: "appnet", IPv4: []netip.Addr{ip}}}
	fx.docker.mu.Unlock()
	fx.docker.event(t)
	eventually(t, "the exemption withdrawn", func() bool { return !strings.Contains(v4.Dump(), accept) })

	// It comes back; then Docker goes away.
	fx.docker.mu.Lock()
	fx.docker.containers = []Container{exempt}
	fx.docker.mu.Unlock()
	fx.docker.event(t)
	eventually(t, "the exemption again", func() bool { return strings.Contains(v4.Dump(), accept) })
	fx.docker.disconnect(t, errors.New("docker event stream ended"))
	eventually(t, "the exemption withdrawn with Docker gone", func() bool { return !strings.Contains(v4.Dump(), accept) })
	// The chain changes mid-sync; the status is published at its end.
	eventually(t, "the status of that sync", func() bool { return fx.agent.Status().Docker.Error != "" })
	if st := fx.agent.Status(); st.Docker.Reachable || st.Verdict == VerdictProtected {
		t.Fatalf("verdict %s, docker %+v", st.Verdict, st.Docker)
	}
}
