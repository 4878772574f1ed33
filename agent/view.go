package agent

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"
)

// containerView is the daemon's list of running containers. Docker events
// and the resync period make it list again, in its own loop; syncs read the
// last listing instead of asking dockerd, whose answer for hundreds of
// containers takes longer than the rest of a sync (bench/README.md, scale).
// A repair therefore never waits for dockerd, and a container change costs
// one list and one sync, as before.
type containerView struct {
	mu    sync.Mutex
	list  []Container
	err   error
	at    time.Time     // when the listing began
	took  time.Duration // how long dockerd took to answer it
	dirty bool          // a Docker event since the listing began
	ready chan struct{} // closed by the first listing
}

func newContainerView() *containerView {
	return &containerView{ready: make(chan struct{})}
}

// listing is one read of the view.
type listing struct {
	containers []Container
	err        error
	at         time.Time
	took       time.Duration
}

// errNotListed is the view's answer before its first listing arrives.
var errNotListed = errors.New("the running containers have not been listed yet")

// get returns the last listing. Before the first one it waits for it (the
// lister's calls are bounded by dockerTimeout), so the first sync does not
// withdraw exemptions an earlier daemon had granted. A listing older than
// maxAge is refused: a stuck lister must not keep exemptions alive.
func (v *containerView) get(ctx context.Context, maxAge time.Duration) listing {
	select {
	case <-v.ready:
	case <-ctx.Done():
		return listing{err: errNotListed}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	l := listing{containers: v.list, err: v.err, at: v.at, took: v.took}
	if l.err == nil && time.Since(l.at) > maxAge {
		l.containers, l.err = nil, errors.New("the last container listing is "+time.Since(l.at).Round(time.Second).String()+" old")
	}
	return l
}

// changed records a Docker event: the next listing must trigger a sync even
// if the list reads the same (a restarted container keeps its ID and
// addresses but has a new network namespace to check).
func (v *containerView) changed() {
	v.mu.Lock()
	v.dirty = true
	v.mu.Unlock()
}

// begin starts a listing; it returns whether an event asked for it.
func (v *containerView) begin() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	d := v.dirty
	v.dirty = false
	return d
}

// set stores a listing that began at at. It reports whether a sync should
// follow: the list or its error changed, or an event asked for it.
func (v *containerView) set(list []Container, err error, at time.Time, took time.Duration, event bool) bool {
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
	v.list, v.err, v.at, v.took = list, err, at, took
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
			maps.Equal(x.Ports, y.Ports) && x.PortErr == y.PortErr
	})
}
