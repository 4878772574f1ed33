package docker

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"
)

// View is the daemon's last snapshot of the running containers. Docker events
// and the resync period make it list again, in its own loop; syncs read the
// last listing instead of asking dockerd, whose answer for hundreds of
// containers takes longer than the rest of a sync (bench/README.md, scale).
// A repair therefore never waits for dockerd, and a container change costs
// one list and one sync, as before.
type View struct {
	mu    sync.Mutex
	list  []Container
	err   error
	at    time.Time     // when the listing began
	took  time.Duration // how long dockerd took to answer it
	dirty bool          // a Docker event since the listing began
	// canInspect is the last snapshot's CanInspect.
	canInspect bool
	ready      chan struct{} // closed by the first listing
}

// NewView is an empty view; Get waits for its first Set.
func NewView() *View {
	return &View{ready: make(chan struct{})}
}

// Snapshot is one listing of the running containers, with what the sync
// needs of each: everything Docker was asked, so a sync asks nothing.
type Snapshot struct {
	// Containers is nil when Err is set: a partial list must not keep an
	// exemption alive.
	Containers []Container
	Err        error
	At         time.Time     // when the listing began
	Took       time.Duration // how long dockerd took to answer it
	// CanInspect: the Source can inspect, so Details were asked for.
	CanInspect bool
}

// errNotListed is the view's answer before its first listing arrives.
var errNotListed = errors.New("the running containers have not been listed yet")

// Get returns the last listing. Before the first one it waits for it (the
// lister's calls are bounded by Timeout), so the first sync does not
// withdraw exemptions an earlier daemon had granted. A listing older than
// maxAge is refused: a stuck lister must not keep exemptions alive.
func (v *View) Get(ctx context.Context, maxAge time.Duration) Snapshot {
	select {
	case <-v.ready:
	case <-ctx.Done():
		return Snapshot{Err: errNotListed}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	l := Snapshot{Containers: v.list, Err: v.err, At: v.at, Took: v.took, CanInspect: v.canInspect}
	if l.Err == nil && time.Since(l.At) > maxAge {
		l.Containers, l.Err = nil, errors.New("the last container listing is "+time.Since(l.At).Round(time.Second).String()+" old")
	}
	return l
}

// Changed records a Docker event: the next listing must trigger a sync even
// if the list reads the same (a restarted container keeps its ID and
// addresses but has a new network namespace to check).
func (v *View) Changed() {
	v.mu.Lock()
	v.dirty = true
	v.mu.Unlock()
}

// Begin starts a listing; it returns whether an event asked for it.
func (v *View) Begin() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	d := v.dirty
	v.dirty = false
	return d
}

// Set stores a snapshot. It reports whether a sync should
// follow: the list or its error changed, or an event asked for it.
func (v *View) Set(s Snapshot, event bool) bool {
	list, err, at, took := s.Containers, s.Err, s.At, s.Took
	if err != nil {
		list = nil // a partial list must not keep an exemption alive
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	first := v.at.IsZero()
	same := !first && (err == nil) == (v.err == nil) && sameContainers(list, v.list)
	if err != nil && v.err != nil {
		same = err.Error() == v.err.Error()
	}
	v.list, v.err, v.at, v.took, v.canInspect = list, err, at, took, s.CanInspect
	if first {
		close(v.ready)
	}
	return first || event || !same
}

// sameContainers compares what a sync reads of each container.
func sameContainers(a, b []Container) bool {
	return slices.EqualFunc(a, b, func(x, y Container) bool {
		return x.ID == y.ID && x.Name == y.Name && x.NetworkMode == y.NetworkMode &&
			slices.Equal(x.IPv4, y.IPv4) && slices.Equal(x.IPv6, y.IPv6) && maps.Equal(x.Labels, y.Labels) &&
			maps.Equal(x.ImageLabels, y.ImageLabels) && (x.ImageLabels == nil) == (y.ImageLabels == nil) &&
			maps.Equal(x.Ports, y.Ports) && x.PortErr == y.PortErr &&
			(x.Details == nil) == (y.Details == nil) && (x.Details == nil || *x.Details == *y.Details) &&
			x.DetailsErr == y.DetailsErr && slices.Equal(x.Env, y.Env) && x.EnvErr == y.EnvErr
	})
}
