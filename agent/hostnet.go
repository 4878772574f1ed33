package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// Host-network containers share the host's namespace: only OUTPUT sees
// their traffic, and only the socket's cgroup tells them from the host and
// the ECS agent, which needs IMDS. The cgroup v2 match (xt_cgroup
// revision 1) resolves its path once, when the rule goes in, so the rules
// follow the containers sync by sync.

// System is what host-network blocking reads of the machine.
type System interface {
	// CgroupV2Unified returns nil when cgroup v2 is the unified hierarchy
	// (mounted at /sys/fs/cgroup), else why not.
	CgroupV2Unified() error
	ReadFile(path string) ([]byte, error)
	// CgroupID identifies the cgroup at a v2 path (its inode): a container
	// restarted in the same path has a new one.
	CgroupID(path string) (uint64, error)
}

// hostCgroup is what the last sync knew of one host-network container.
type hostCgroup struct {
	path string
	id   uint64
}

// cgroupV2Path returns the path of the "0::" line of /proc/PID/cgroup.
func cgroupV2Path(b []byte) (string, bool) {
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p, true
		}
	}
	return "", false
}

// within reports whether p is q or one of q's ancestors: a rule for p
// would also match q.
func within(p, q string) bool {
	return p == q || p == "/" || strings.HasPrefix(q, p+"/")
}

// hostContainers are the host-network containers and every container
// that joins one's namespace (it has a cgroup of its own).
func hostContainers(containers []docker.Container) []docker.Container {
	var hosts []docker.Container
	ix := docker.NewIndex(containers)
	for _, c := range containers {
		if o, ok := ix.Owner(c); ok {
			if class, _ := docker.ModeClass(o); class == docker.ModeHost {
				hosts = append(hosts, c)
			}
		}
	}
	return hosts
}

// hostPlan is what the desired state says of host-network containers.
type hostPlan struct {
	status status.HostNetworkStatus
	// spec is nil when the host chain is to be left as it is.
	spec *firewall.HostSpec
	// blocked says why a container is blocked, by ID.
	blocked map[string]string
	// stale lists the paths whose cgroup was recreated (docker restart)
	// since the rule went in: the kernel resolved the old one, so the rule
	// must be put in again.
	stale []string
	// known replaces the agent's hostCgroups when remember is set.
	known    map[string]hostCgroup
	remember bool
	err      error
}

// desiredHost reports every host-network container and, with
// --block-host-network on a cgroup v2 host, the HostSpec that blocks them.
// It is pure: every cgroup it needs was read into r (hostread.go). It never
// returns a path that is, or contains, the cgroup of the agent, of PID 1 or
// of the ECS agent container. A container whose cgroup could not be read
// keeps the path the last sync found (fail closed; only a listing without
// the container, with listed set, forgets it); the error is returned so the
// sync is retried.
func desiredHost(cfg Config, containers []docker.Container, exempt map[string]string, listed bool, r hostReads, last map[string]hostCgroup) hostPlan {
	p := hostPlan{status: status.HostNetworkStatus{Block: cfg.BlockHostNetwork, Containers: []status.HostContainer{}}, blocked: map[string]string{}}
	st := &p.status
	switch {
	case !cfg.BlockHostNetwork:
		st.Enforcement = "off: --block-host-network is not set"
	case r.unified != nil:
		st.Enforcement = "unavailable: " + r.unified.Error()
	case !r.canInspect:
		st.Enforcement = "unavailable: containers cannot be inspected"
	case r.forbiddenErr != nil:
		st.Enforcement = "unavailable: " + r.forbiddenErr.Error()
	default:
		st.Enforcement = "active"
		p.spec = &firewall.HostSpec{}
	}
	known := map[string]hostCgroup{}
	var errs []error
	for _, c := range hostContainers(containers) {
		hc := status.HostContainer{ID: docker.Short(c.ID), Name: c.Name, TaskARN: c.Labels[docker.LabelTaskARN], ECSContainer: c.Labels[docker.LabelContainerName]}
		switch {
		case c.Name == docker.ECSAgentName:
			hc.Reason = "the ECS agent needs IMDS: never blocked"
		case exempt[c.ID] != "":
			hc.Reason = "exempt (" + exempt[c.ID] + ")"
		case p.spec == nil:
			hc.Reason = "can reach IMDS: host network blocking is " + st.Enforcement
		default:
			cr, ok := r.cgroups[c.ID]
			if !ok {
				cr.pathErr = fmt.Errorf("the cgroup of %s was not read", docker.Short(c.ID))
			}
			path, err := cr.path, cr.pathErr
			var id uint64
			if err == nil {
				if cerr := checkCgroup(path, r.forbidden); cerr != nil {
					// Where it runs, not a failed read: no rule can name it.
					hc.Cgroup, hc.Reason = path, "can reach IMDS: "+cerr.Error()
					break
				}
				id, err = cr.id, cr.idErr
			}
			prev, had := last[c.ID]
			kept := ""
			if err != nil {
				if !had {
					hc.Cgroup = path
					hc.Reason = "can reach IMDS: " + err.Error()
					errs = append(errs, fmt.Errorf("host-network container %s: %w", c.Name, err))
					break
				}
				// Fail closed: what could not be read now is no reason to
				// lift the rule the container had.
				errs = append(errs, fmt.Errorf("host-network container %s: keeping its rule: %w", c.Name, err))
				kept = " (kept from the last sync: " + err.Error() + ")"
				path, id = prev.path, prev.id
				// A restart need not be seen through Docker: a new cgroup
				// in the same path still needs its rule put in again.
				if cr.prevErr == nil && cr.prevID != id {
					p.stale, id = append(p.stale, path), cr.prevID
				}
			} else if had && prev.path == path && prev.id != id {
				p.stale = append(p.stale, path)
			}
			known[c.ID] = hostCgroup{path: path, id: id}
			hc.Cgroup = path
			p.spec.Cgroups = append(p.spec.Cgroups, path)
			hc.Blocked = true
			hc.Reason = "host network: blocked in " + firewall.HostChain + " by its cgroup" + kept
			p.blocked[c.ID] = hc.Reason
		}
		st.Containers = append(st.Containers, hc)
	}
	p.known, p.remember = known, p.spec != nil && listed
	p.err = errors.Join(errs...)
	return p
}

// withoutPaths is spec less the given cgroup paths.
func withoutPaths(spec *firewall.HostSpec, paths []string) *firewall.HostSpec {
	out := &firewall.HostSpec{}
	for _, p := range spec.Cgroups {
		if !slices.Contains(paths, p) {
			out.Cgroups = append(out.Cgroups, p)
		}
	}
	return out
}

// checkCgroup refuses a path a rule must not match.
func checkCgroup(path string, forbidden []string) error {
	if !firewall.ValidCgroupPath(path) {
		return fmt.Errorf("cgroup path %q cannot name one container", path)
	}
	for _, f := range forbidden {
		if within(path, f) {
			return fmt.Errorf("cgroup %s also holds %s, which must keep IMDS", path, f)
		}
	}
	return nil
}

// reinsertHost puts back the rules of host-network containers whose cgroup
// was recreated under the same path: the match resolved the old cgroup
// when the rule went in, and an unchanged rule text would never be
// rebuilt. The chain is rebuilt once without them, then (by the caller's
// own pass) with them; the old rules matched nothing any more.
func (a *Agent) reinsertHost(ctx context.Context, spec firewall.Spec, stale []string) {
	spec.Host = withoutPaths(spec.Host, stale)
	_, err := a.firewall(ctx, true, spec)
	log := a.log.WithField("cgroups", stale)
	if err != nil {
		log.WithError(err).Error("could not rebuild the host-network rules of recreated cgroups")
		return
	}
	log.Info("host-network containers were restarted in the same cgroup path; putting their rules in again")
}

// hostChainRemover is implemented by firewalls that can delete the host
// chain on its own (firewall.Manager).
type hostChainRemover interface {
	HostChainLeft(ctx context.Context, remove bool) ([]firewall.Family, error)
}

// hostChainOff: with --block-host-network off, the daemon and `apply`
// delete IMDS-GUARD-HOST and its OUTPUT jump; when that fails, or `check`
// only looks, the status says the chain is still there.
func (a *Agent) hostChainOff(ctx context.Context, enforce bool, st *status.HostNetworkStatus) error {
	if a.cfg.BlockHostNetwork {
		return nil
	}
	a.mu.Lock()
	fw := a.fw
	clean := fw != nil && a.hostChainGone == fw
	a.mu.Unlock()
	r, ok := fw.(hostChainRemover)
	if !ok || clean {
		// No firewall yet (the next pass looks again), or the chain is
		// known gone: nothing creates it while blocking is off, so one
		// iptables-save per family per sync is not spent on it.
		return nil
	}
	left, err := r.HostChainLeft(ctx, enforce)
	if len(left) == 0 && err == nil {
		a.mu.Lock()
		a.hostChainGone = fw
		a.mu.Unlock()
	}
	if len(left) > 0 {
		st.Enforcement += fmt.Sprintf("; %s from an earlier run is still in place (%v): it blocks the containers it names, and `imdsguard remove` or the daemon deletes it", firewall.HostChain, left)
	}
	if err != nil {
		return fmt.Errorf("removing %s: %w", firewall.HostChain, err)
	}
	return nil
}
