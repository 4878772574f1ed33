package agent

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// withLayer1 gives the fixture's agent a layer 1 over a fake nf_tables.
func withLayer1(t *testing.T, fx *fixture, ns *firewall.FakeNFTNetns) *Agent {
	t.Helper()
	a := fx.build(t)
	a.l1 = &layer1{open: func(bool) (*firewall.NFTLayer, error) {
		return firewall.NewFakeNFTLayer(ns, firewall.NFTSpec{Scope: firewall.ScopeHost}, nil)
	}}
	return a
}

func once(t *testing.T, a *Agent, enforce bool) *status.Status {
	t.Helper()
	st, err := a.Once(context.Background(), enforce)
	if err != nil && !IsPartial(err) {
		t.Fatal(err)
	}
	return st
}

func TestLayer1InVerdict(t *testing.T) {
	fx := newFixture(t)
	fx.docker.containers = []docker.Container{{ID: "c1", Name: "web", NetworkMode: "bridge"}}
	ns := firewall.NewFakeNFTNetns(firewall.NFTFlags{Owner: true, Persist: true})
	a := withLayer1(t, fx, ns)

	st := once(t, a, true)
	n := st.Firewall.NFTables
	if st.Verdict != status.VerdictProtected || n == nil || !n.Present || !n.Owned || n.SurvivesFlush != "yes" || n.SurvivesStop != "yes" {
		t.Fatalf("both layers: %s %v %+v", st.Verdict, st.Reasons, n)
	}
	var text strings.Builder
	st.WriteText(&text)
	if !strings.Contains(text.String(), "survives nft flush: yes; survives agent stop: yes") {
		t.Fatalf("status text:\n%s", text.String())
	}

	// Layer 2 flushed away: layer 1 still blocks, so degraded, not exposed.
	for _, f := range fx.fakes {
		f.Flush(firewall.Forward)
	}
	st = once(t, a, false)
	if st.Verdict != status.VerdictDegraded || !slices.ContainsFunc(st.Reasons, func(r string) bool { return strings.Contains(r, "nftables layer still blocks") }) {
		t.Fatalf("layer 2 gone: %s %v", st.Verdict, st.Reasons)
	}
	for _, c := range st.Containers {
		if !c.Protected {
			t.Fatalf("container %s unprotected with layer 1 whole: %s", c.Name, c.Reason)
		}
	}

	// Someone's `nft flush ruleset` leaves the owned tables.
	ns.FlushRuleset(1)
	if st = once(t, a, false); !st.Firewall.NFTables.Present {
		t.Fatalf("after flush ruleset: %+v", st.Firewall.NFTables)
	}

	// Layer 1 gone too (the owner exits on an owner-only kernel): exposed.
	a.closeLayer1()
	if err := ns.DeleteTable(nftables.TableFamilyINet, 1); err != nil {
		t.Fatal(err)
	}
	st = once(t, a, false)
	if st.Verdict != status.VerdictExposed || st.Firewall.NFTables.Present {
		t.Fatalf("neither layer: %s %+v", st.Verdict, st.Firewall.NFTables)
	}
	// And one sync brings both back.
	if st = once(t, a, true); st.Verdict != status.VerdictProtected {
		t.Fatalf("repaired: %s %v", st.Verdict, st.Reasons)
	}
}

func TestLayer1MissingIsDegraded(t *testing.T) {
	fx := newFixture(t)
	a := withLayer1(t, fx, firewall.NewFakeNFTNetns(firewall.NFTFlags{Owner: true, Persist: true}))
	once(t, a, true)
	// A check from another process sees the tables the daemon owns as
	// whole, not as a problem.
	a.closeLayer1() // orphaned (persist)
	st := once(t, a, false)
	if !st.Firewall.NFTables.Present || st.Verdict != status.VerdictDegraded {
		t.Fatalf("orphaned tables: %s %v %+v", st.Verdict, st.Reasons, st.Firewall.NFTables)
	}
	a.l1.open = func(bool) (*firewall.NFTLayer, error) { return nil, context.DeadlineExceeded }
	a.closeLayer1()
	st = once(t, a, true)
	if st.Verdict != status.VerdictDegraded || st.Firewall.NFTables.Error == "" {
		t.Fatalf("layer 1 cannot open: %s %v", st.Verdict, st.Reasons)
	}
}

// TestLayer1InTask: in --awsvpc-mode enforce each task namespace gets an
// owned table of its own beside its routes; the task is protected by
// either; the socket closes when the task goes away.
func TestLayer1InTask(t *testing.T) {
	fx := awsvpcFixture(t, ECSModeEnforce, true)
	nsByPath := map[string]*firewall.FakeNFTNetns{}
	a := fx.build(t)
	a.tasks1 = &taskLayers{m: map[string]*firewall.NFTLayer{}, open: func(path string, spec firewall.NFTSpec) (*firewall.NFTLayer, error) {
		if nsByPath[path] == nil {
			nsByPath[path] = firewall.NewFakeNFTNetns(firewall.NFTFlags{Owner: true, Persist: true})
		}
		return firewall.NewFakeNFTLayer(nsByPath[path], spec, nil)
	}}
	st := once(t, a, true)
	task := st.AWSVPC.Tasks[0]
	if task.NFTables == nil || !task.NFTables.Present || !task.NFTables.Owned || !task.Protected {
		t.Fatalf("task: %+v nft %+v", task, task.NFTables)
	}
	n := nsByPath["/var/run/docker/netns/pause"]
	// The routes go (NET_ADMIN in the task) and stay gone: the table holds.
	fx.ns.(*fakeNS).deleteRoute("/var/run/docker/netns/pause")
	n.FlushRuleset(1)
	if tbl := n.Table(nftables.TableFamilyINet); tbl == nil {
		t.Fatal("flush ruleset inside the task deleted the owned table")
	}
	// The task stops: its socket is closed (persist: the table stays
	// with the namespace until it goes).
	fx.docker.containers = nil
	once(t, a, true)
	if len(a.tasks1.m) != 0 {
		t.Fatalf("task sockets left open: %v", a.tasks1.m)
	}
	if n.Table(nftables.TableFamilyINet) == nil {
		t.Fatal("table gone with the socket on a persist kernel")
	}
}
