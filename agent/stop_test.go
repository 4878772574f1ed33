package agent

import (
	"context"
	"net/netip"
	"testing"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/status"
)

// A sync the daemon's stop cuts short publishes nothing: its reads fail
// because of the stop, not because anything changed, and the tables stay.
func TestSyncCutShortByStopPublishesNothing(t *testing.T) {
	fx := newFixture(t)
	fx.docker.containers = []docker.Container{{ID: "aaaaaaaaaaaaaaaa", Name: "web", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.2")}}}
	a := fx.build(t)
	if err := a.sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := a.Status()
	if before.Verdict != status.VerdictProtected {
		t.Fatalf("first sync: %s %v", before.Verdict, before.Reasons)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.sync(ctx); err == nil {
		t.Fatal("a sync cut short reported success")
	}
	if after := a.Status(); after.Verdict != before.Verdict || !after.CheckedAt.Equal(before.CheckedAt) {
		t.Fatalf("a sync cut short published %s (%v) at %v", after.Verdict, after.Reasons, after.CheckedAt)
	}
}
