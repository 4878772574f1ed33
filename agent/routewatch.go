package agent

import (
	"context"
	"time"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/tasknet"
)

// A task namespace's route watch vouches for the last verified read of its
// routes: while the watch is live and has reported no change since that
// read began, a resync takes the read instead of asking the kernel again
// (reading every task's routes on every resync was most of an idle agent's
// CPU). Any failed read, a new subscription, a reported change or a read
// routeReread old means a full read.

// routeReread bounds how long a watch vouches for one read: what the watch
// does not hear of (an address, a sysctl) is read at least this often.
const routeReread = time.Minute

// nsWatch is one task namespace's route watch.
type nsWatch struct {
	path   string
	cancel context.CancelFunc
	// id tells this subscription from any earlier one for the task.
	id uint64
	// changes counts what the watch reported: the first once subscribed,
	// then one per route or policy rule change.
	changes uint64
}

// watchMark is a watch's state when a read began.
type watchMark struct {
	watch, changes uint64 // 0, 0: no watch
	at             time.Time
}

// verifiedRead is a task's last successful full read of its routes.
type verifiedRead struct {
	path   string
	routes tasknet.NSRoutes
	mark   watchMark
}

// vouches reports whether the watch w, live or not, stands for v at now,
// for a namespace at path or byPid: the same subscription, which had
// reported in (subscribed) before the read began and has reported nothing
// since, and a read less than routeReread old.
func vouches(w nsWatch, live bool, v verifiedRead, path, byPid string, now time.Time) bool {
	samePath := v.path == path || (byPid != "" && v.path == byPid)
	age := now.Sub(v.mark.at)
	return live && samePath && w.path == v.path && v.mark.watch == w.id && v.mark.changes > 0 &&
		w.changes == v.mark.changes && age >= 0 && age < routeReread
}

// vouched returns the task's verified read when its watch vouches for it.
func (a *Agent) vouched(id, path, byPid string) (verifiedRead, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.verified[id]
	w, live := a.watches[id]
	return v, ok && vouches(w, live, v, path, byPid, a.now())
}

// beforeRead marks the task's watch as a read begins: a change reported
// from here on, even one the read saw, forces the next full read.
func (a *Agent) beforeRead(id string) watchMark {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.watches[id]
	return watchMark{watch: w.id, changes: w.changes, at: a.now()}
}

// afterRead keeps a successful read for the watch to vouch for, and
// forgets the task's last one on a failure.
func (a *Agent) afterRead(id string, m watchMark, r nsRead) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.err != nil {
		delete(a.verified, id)
		return
	}
	a.verified[id] = verifiedRead{path: r.path, routes: r.routes, mark: m}
}

// routeChanged counts a report of the task's watch wid.
func (a *Agent) routeChanged(id string, wid uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w, ok := a.watches[id]; ok && w.id == wid {
		w.changes++
		a.watches[id] = w
	}
}

// watchNamespaces keeps one route watcher per awsvpc namespace: new ones
// start, those of tasks that are gone stop (a watcher's socket would keep a
// dead task's namespace alive).
func (a *Agent) watchNamespaces(ctx context.Context, want map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, w := range a.watches {
		if want[id] != w.path {
			w.cancel()
			delete(a.watches, id)
		}
	}
	for id := range a.routesSeen {
		if _, ok := want[id]; !ok {
			delete(a.routesSeen, id)
		}
	}
	for id := range a.verified {
		if _, ok := want[id]; !ok {
			delete(a.verified, id)
		}
	}
	for id, path := range want {
		if _, ok := a.watches[id]; ok {
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		a.watchSeq++
		wid := a.watchSeq
		a.watches[id] = nsWatch{path: path, cancel: cancel, id: wid}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			err := a.namespaces.Watch(wctx, path, func() {
				a.routeChanged(id, wid) // before the sync it asks for
				a.runner.Trigger()
			})
			if wctx.Err() != nil {
				return
			}
			a.log.WithError(err).WithField("pause", docker.Short(id)).Debug("route watch ended")
			// The next sync starts a new watcher if the task is still
			// there; until then the periodic resync covers it, reading
			// in full (an ended watch vouches for nothing).
			a.mu.Lock()
			if w, ok := a.watches[id]; ok && w.id == wid {
				delete(a.watches, id)
			}
			a.mu.Unlock()
		}()
	}
}
