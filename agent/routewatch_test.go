package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/status"
	"github.com/imdsguard/imdsguard/tasknet"
)

// TestRouteWatchVouches: the rules by which a live watch stands for the
// last verified read of a task's routes.
func TestRouteWatchVouches(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	const path, byPid = "/var/run/docker/netns/t", "/proc/9/ns/net"
	w := nsWatch{path: path, id: 3, changes: 1}
	read := verifiedRead{path: path, routes: blocked4, mark: watchMark{watch: 3, changes: 1, at: t0}}
	for _, tc := range []struct {
		name string
		w    nsWatch
		live bool
		v    verifiedRead
		now  time.Time
		want bool
	}{
		{"live, nothing reported since the read", w, true, read, t0.Add(30 * time.Second), true},
		{"a change reported since the read", nsWatch{path: path, id: 3, changes: 2}, true, read, t0.Add(time.Second), false},
		{"the watch ended", w, false, read, t0.Add(time.Second), false},
		{"a new subscription", nsWatch{path: path, id: 4, changes: 1}, true, read, t0.Add(time.Second), false},
		{"read before the watch had subscribed", nsWatch{path: path, id: 3}, true,
			verifiedRead{path: path, mark: watchMark{watch: 3, at: t0}}, t0.Add(time.Second), false},
		{"read with no watch", nsWatch{path: path, id: 3, changes: 1}, true,
			verifiedRead{path: path, mark: watchMark{at: t0}}, t0.Add(time.Second), false},
		{"a minute since the read", w, true, read, t0.Add(routeReread), false},
		{"just under a minute", w, true, read, t0.Add(routeReread - time.Millisecond), true},
		{"the clock went back", w, true, read, t0.Add(-time.Second), false},
		{"the task's namespace moved", w, true, read, t0.Add(time.Second), false}, // path checked below
		{"read through the pid's link", nsWatch{path: byPid, id: 3, changes: 1}, true,
			verifiedRead{path: byPid, mark: watchMark{watch: 3, changes: 1, at: t0}}, t0.Add(time.Second), true},
		{"a watch on another path", nsWatch{path: byPid, id: 3, changes: 1}, true, read, t0.Add(time.Second), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := path
			if tc.name == "the task's namespace moved" {
				p = "/var/run/docker/netns/other"
			}
			if got := vouches(tc.w, tc.live, tc.v, p, byPid, tc.now); got != tc.want {
				t.Fatalf("vouches %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRouteWatchBookkeeping: the agent's side of the rules, without a
// watch goroutine: what a read, a failed read and a report leave behind.
func TestRouteWatchBookkeeping(t *testing.T) {
	a := New(Options{Log: testLog(t), Namespaces: fakeNSNone{}})
	now := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return now }
	const id, path = "pause0000000", "/var/run/docker/netns/t"
	a.watches[id] = nsWatch{path: path, id: 1}
	// Read before the subscription reported: not vouched for.
	a.afterRead(id, a.beforeRead(id), nsRead{path: path, routes: blocked4})
	if _, ok := a.vouched(id, path, ""); ok {
		t.Fatal("a read from before the watch subscribed was vouched for")
	}
	a.routeChanged(id, 1) // subscribed
	a.afterRead(id, a.beforeRead(id), nsRead{path: path, routes: blocked4})
	if v, ok := a.vouched(id, path, ""); !ok || v.routes != blocked4 {
		t.Fatalf("a read after the subscription: %v %+v", ok, v)
	}
	// A change that lands while a read is under way: the next one is full.
	m := a.beforeRead(id)
	a.routeChanged(id, 1)
	a.afterRead(id, m, nsRead{path: path, routes: blocked4})
	if _, ok := a.vouched(id, path, ""); ok {
		t.Fatal("a read overtaken by a change was vouched for")
	}
	a.afterRead(id, a.beforeRead(id), nsRead{path: path, routes: blocked4})
	a.routeChanged(id, 7) // an ended watch's late report counts for nothing
	if _, ok := a.vouched(id, path, ""); !ok {
		t.Fatal("another subscription's report voided this one's read")
	}
	// A failed read forgets the last good one.
	a.afterRead(id, a.beforeRead(id), nsRead{path: path, err: fmt.Errorf("gone")})
	if _, ok := a.vouched(id, path, ""); ok {
		t.Fatal("a failed read left the previous one vouched for")
	}
	a.afterRead(id, a.beforeRead(id), nsRead{path: path, routes: blocked4})
	now = now.Add(routeReread)
	if _, ok := a.vouched(id, path, ""); ok {
		t.Fatal("a read a minute old was vouched for")
	}
}

// TestIdleRouteReads counts the Routes calls of a minute of idle resyncs
// (the default 5 s interval, on a clock the test moves) with 50 tasks:
// every resync read every task before the watches vouched for the reads;
// now each task is read once a minute, and a change is still read at once.
func TestIdleRouteReads(t *testing.T) {
	const n = 50
	for _, tc := range []struct {
		name string
		// silent: the watches never report, so none vouches (every
		// resync reads every task, as before).
		silent bool
		max    int
	}{
		{"watches vouch", false, n},
		{"no watch vouches", true, 12 * n},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t)
			fx.cfg.AWSVPCMode = ECSModeEnforce
			fx.insp = map[string]docker.Details{}
			ns := newFakeNS()
			ns.silent = tc.silent
			for i := range n {
				id := fmt.Sprintf("pause%011d", i)
				path := "/var/run/docker/netns/" + id
				fx.docker.containers = append(fx.docker.containers, docker.Container{ID: id, Name: "pause-" + id, NetworkMode: "none",
					Labels: map[string]string{docker.LabelTaskARN: "arn:task/" + id}})
				fx.insp[id] = docker.Details{Pid: 1000 + i, SandboxKey: path}
				ns.routes[path] = &tasknet.NSRoutes{V4Blackhole: true, V4Guard: true}
			}
			fx.ns = ns
			var mu = make(chan struct{}, 1)
			now := time.Now()
			clock := func() time.Time { mu <- struct{}{}; defer func() { <-mu }(); return now }
			step := func(d time.Duration) { mu <- struct{}{}; now = now.Add(d); <-mu }
			fx.start(t, func(a *Agent) { a.now = clock })
			sync := func() status.Status {
				at := fx.agent.Status().LastSync
				fx.agent.Trigger()
				eventually(t, "a sync", func() bool {
					st := fx.agent.Status()
					return st.LastSync != nil && (at == nil || st.LastSync.At.After(at.At))
				})
				return fx.agent.Status()
			}
			reads := func() int { ns.mu.Lock(); defer ns.mu.Unlock(); return ns.reads }
			eventually(t, "watching every task", func() bool {
				ns.mu.Lock()
				defer ns.mu.Unlock()
				return len(ns.watches) == n
			})
			// Let the syncs the subscriptions asked for run; the last full
			// read is then the one the minute counts from.
			sync()
			sync()
			before := reads()
			for range 12 {
				step(5 * time.Second)
				if st := sync(); st.Verdict != status.VerdictProtected {
					t.Fatalf("verdict %s %v", st.Verdict, st.Reasons)
				}
			}
			got := reads() - before
			t.Logf("%d tasks, a minute of 5 s resyncs: %d Routes calls", n, got)
			if got > tc.max || !tc.silent && got < n {
				t.Fatalf("%d Routes calls, want at most %d (and each task read once a minute)", got, tc.max)
			}
			if tc.silent {
				return
			}
			// A change is read, and repaired, at once.
			before = reads()
			ns.deleteRoute("/var/run/docker/netns/pause00000000007")
			eventually(t, "repair", func() bool { return fx.agent.Status().Repairs == 1 })
			if got := reads() - before; got > 4 {
				t.Fatalf("one change cost %d Routes calls", got)
			}
		})
	}
}
