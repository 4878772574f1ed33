package docker

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// PortFinder finds the bridge ports behind a container's addresses, given
// the pid of a process in its network namespace.
type PortFinder interface {
	Ports(pid int) (map[netip.Addr]BridgePort, error)
}

// Lister takes snapshots: one list, then, for the few containers that need
// them, the reads a list does not answer (inspects, image labels, bridge
// ports, the ECS agent's environment). It runs in the daemon's lister loop
// (or once for a one-shot command), never in a sync.
type Lister struct {
	Source Source
	// Ports finds exemption candidates' bridge ports; nil: not looked up.
	Ports PortFinder
	// Exemptable says which containers could be exempt: only those get
	// their image's labels and bridge ports read.
	Exemptable func(Container) bool

	mu  sync.Mutex
	env map[string]envRead // the ECS agent's, by container ID
}

type envRead struct {
	env []string
	err string
}

// Take lists the running containers and reads what the sync needs of them.
// Any error of the list itself comes with no containers.
func (l *Lister) Take(ctx context.Context) Snapshot {
	start := time.Now()
	_, canInspect := l.Source.(Inspector)
	list, err := l.Source.Containers(ctx)
	if err != nil {
		list = nil
	} else {
		l.details(ctx, list)
		l.enrich(ctx, list)
		l.agentEnv(ctx, list)
	}
	return Snapshot{Containers: list, Err: err, At: start, Took: time.Since(start), CanInspect: canInspect}
}

// needsDetails: awsvpc pause containers, host-network containers, and the
// containers that join either's namespace.
func needsDetails(ix Index, c Container) bool {
	o, ok := ix.Owner(c)
	if !ok {
		return false
	}
	class, _ := ModeClass(o)
	return class == ModeAWSVPC || class == ModeHost
}

// details inspects the containers whose namespace or cgroup a sync judges
// (the moby Client caches each until the container's next event).
func (l *Lister) details(ctx context.Context, list []Container) {
	insp, ok := l.Source.(Inspector)
	if !ok {
		return
	}
	ix := NewIndex(list)
	for i := range list {
		c := &list[i]
		if !needsDetails(ix, *c) {
			continue
		}
		d, err := insp.Inspect(ctx, c.ID)
		if err != nil {
			c.DetailsErr = err.Error()
			continue
		}
		c.Details = &d
	}
}

// agentEnv reads the ECS agent's environment, fixed for the life of its
// container, once per container ID (again after a failure).
func (l *Lister) agentEnv(ctx context.Context, list []Container) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range list {
		c := &list[i]
		if c.Name != ECSAgentName {
			continue
		}
		e, ok := l.env[c.ID]
		if !ok || e.err != "" {
			env, err := l.Source.Env(ctx, c.ID)
			e = envRead{env: env}
			if err != nil {
				e.err = err.Error()
			}
			l.env = map[string]envRead{c.ID: e}
		}
		c.Env, c.EnvErr = e.env, e.err
		return
	}
	l.env = nil
}

// enrich reads, for exemption candidates only, their image's labels and
// their bridge ports. Whatever fails is left empty, which withholds the
// exemption, and noted.
func (l *Lister) enrich(ctx context.Context, list []Container) {
	il, _ := l.Source.(ImageLabeler)
	insp, _ := l.Source.(Inspector)
	for i := range list {
		c := &list[i]
		if l.Exemptable == nil || !l.Exemptable(*c) || c.Name == ECSAgentName {
			continue
		}
		if il != nil {
			if labels, err := il.ImageLabels(ctx, c.ImageID); err == nil {
				if labels == nil {
					labels = map[string]string{}
				}
				c.ImageLabels = labels
			}
		}
		if class, _ := ModeClass(*c); class != ModeBridge && class != ModeUserNet {
			continue
		}
		switch {
		case insp == nil || l.Ports == nil:
			c.PortErr = "bridge ports cannot be looked up here"
		default:
			det, err := insp.Inspect(ctx, c.ID)
			if err != nil {
				c.PortErr = err.Error()
				break
			}
			ports, err := l.Ports.Ports(det.Pid)
			if err != nil {
				c.PortErr = err.Error()
				break
			}
			c.Ports = ports
		}
	}
}
