package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/imdsguard/imdsguard/firewall"
)

// Layer 1 inside awsvpc task namespaces (--awsvpc-mode enforce): the same
// owned table with an output drop, so a container with NET_ADMIN can
// neither delete the block nor route around the blackhole. One socket per
// task, held until the task goes away; the blackhole routes stay as ECS
// made them.

// TaskNFTOpener opens layer 1 in the namespace at path.
type TaskNFTOpener func(path string, spec firewall.NFTSpec) (*firewall.NFTLayer, error)

// taskNFTReread is how often a task's table is read back even when nothing
// has been committed in its namespace.
const taskNFTReread = time.Minute

type taskLayers struct {
	open TaskNFTOpener
	mu   sync.Mutex
	m    map[string]*firewall.NFTLayer // by pause container ID
}

// taskLayer1 ensures the task's table; nil when layer 1 is off.
func (a *Agent) taskLayer1(ctx context.Context, pauseID, path string, ipv6 bool) (*firewall.NFTState, error) {
	tl := a.tasks1
	if tl == nil || tl.open == nil {
		return nil, nil
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	spec := firewall.NFTSpec{Scope: firewall.ScopeTask, Action: a.cfg.Action, IPv6: ipv6}
	l := tl.m[pauseID]
	if l == nil {
		var err error
		if l, err = tl.open(path, spec); err != nil {
			return nil, fmt.Errorf("nftables layer in %s: %w", path, err)
		}
		// Every resync checks every task: between commits in its
		// namespace the last verified read stands (its counters at
		// most taskNFTReread old).
		l.ReuseVerified(taskNFTReread)
		tl.m[pauseID] = l
	}
	a.openTaskAttempts(pauseID, path)
	l.SetSpec(spec)
	st, err := l.EnsureNFT(ctx)
	return &st, err
}

// pruneTaskLayers closes the sockets of tasks no longer running (nil: all,
// when the agent stops).
func (a *Agent) pruneTaskLayers(running map[string]bool) {
	tl := a.tasks1
	if tl == nil {
		return
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var errs []error
	for id, l := range tl.m {
		if !running[id] {
			a.closeTaskAttempts(id)
			errs = append(errs, l.Close())
			delete(tl.m, id)
		}
	}
	if err := errors.Join(errs...); err != nil {
		a.log.WithError(err).Warn("nftables layer: closing task sockets")
	}
}
