package agent

import (
	"errors"
	"fmt"

	"github.com/imdsguard/imdsguard/docker"
)

// The reads host-network blocking needs of the machine, gathered before
// the desired state is computed (desiredHost is pure).

// hostReads is what one pass read of the machine for host-network blocking.
type hostReads struct {
	// canInspect: the snapshot's containers carry their inspect details.
	canInspect bool
	// unified is nil when cgroup v2 is the unified hierarchy.
	unified error
	// forbidden are the cgroups no rule may match: the agent's, PID 1's
	// and the ECS agent container's.
	forbidden    []string
	forbiddenErr error
	// cgroups by container ID.
	cgroups map[string]cgroupRead
}

// cgroupRead is one host-network container's cgroup as read in this pass.
type cgroupRead struct {
	path    string
	pathErr error
	id      uint64
	idErr   error
	// prevID is the id now at the path the last sync found (a restart in
	// the same path makes a new cgroup), read when the last sync had one.
	prevID  uint64
	prevErr error
}

// readHost reads what desiredHost needs: nothing unless blocking is on and
// can work, then the forbidden cgroups and each host-network container's.
func (a *Agent) readHost(containers []docker.Container, canInspect bool, last map[string]hostCgroup) hostReads {
	r := hostReads{canInspect: canInspect}
	if !a.cfg.BlockHostNetwork {
		return r
	}
	if r.unified = a.sys.CgroupV2Unified(); r.unified != nil || !canInspect {
		return r
	}
	hosts := hostContainers(containers)
	if r.forbidden, r.forbiddenErr = a.forbiddenCgroups(hosts); r.forbiddenErr != nil {
		return r
	}
	r.cgroups = map[string]cgroupRead{}
	for _, c := range hosts {
		if c.Name == docker.ECSAgentName {
			continue
		}
		var cr cgroupRead
		cr.path, cr.pathErr = a.containerCgroup(c)
		if cr.pathErr == nil {
			cr.id, cr.idErr = a.sys.CgroupID(cr.path)
		}
		if prev, had := last[c.ID]; had && (cr.pathErr != nil || cr.idErr != nil) {
			cr.prevID, cr.prevErr = a.sys.CgroupID(prev.path)
		}
		r.cgroups[c.ID] = cr
	}
	return r
}

// forbiddenCgroups are the cgroups that must never be matched: the agent's,
// PID 1's and the ECS agent container's.
func (a *Agent) forbiddenCgroups(hosts []docker.Container) ([]string, error) {
	var out []string
	var errs []error
	for _, pid := range []string{"self", "1"} {
		p, err := a.pidCgroup(pid)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, p)
	}
	for _, c := range hosts {
		if c.Name != docker.ECSAgentName {
			continue
		}
		p, err := a.containerCgroup(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("the ECS agent's cgroup: %w", err))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// containerCgroup reads the cgroup of the pid the snapshot's inspect found.
func (a *Agent) containerCgroup(c docker.Container) (string, error) {
	d, err := details(c)
	if err != nil {
		return "", err
	}
	if d.Pid <= 0 {
		return "", fmt.Errorf("container %s has no pid", docker.Short(c.ID))
	}
	return a.pidCgroup(fmt.Sprint(d.Pid))
}

func (a *Agent) pidCgroup(pid string) (string, error) {
	b, err := a.sys.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return "", fmt.Errorf("reading the cgroup of %s: %w", pid, err)
	}
	p, ok := cgroupV2Path(b)
	if !ok {
		return "", fmt.Errorf("/proc/%s/cgroup has no cgroup v2 line", pid)
	}
	return p, nil
}
