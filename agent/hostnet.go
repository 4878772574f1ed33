package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/imdsguard/imdsguard/firewall"
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
}

// HostNetworkStatus is every host-network container and whether it is blocked.
type HostNetworkStatus struct {
	Block bool `json:"block"`
	// Enforcement is "active", "off: ..." or "unavailable: ...".
	Enforcement string          `json:"enforcement"`
	Containers  []HostContainer `json:"containers"`
}

// HostContainer is one host-network container.
type HostContainer struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	TaskARN      string `json:"task_arn,omitempty"`
	ECSContainer string `json:"ecs_container,omitempty"`
	Blocked      bool   `json:"blocked"`
	Cgroup       string `json:"cgroup,omitempty"`
	Reason       string `json:"reason"`
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

// hostNetwork reports every host-network container and, with
// --block-host-network on a cgroup v2 host, returns the HostSpec that
// blocks them. A nil spec leaves the host chain as it is. It never returns
// a path that is, or contains, the cgroup of the agent, of PID 1 or of the
// ECS agent container.
func (a *Agent) hostNetwork(ctx context.Context, containers []Container, exempt map[string]string) (HostNetworkStatus, *firewall.HostSpec, map[string]string) {
	st := HostNetworkStatus{Block: a.cfg.BlockHostNetwork, Containers: []HostContainer{}}
	var hosts []Container
	for _, c := range containers {
		if class, _ := modeClass(c); class == ModeHost {
			hosts = append(hosts, c)
		}
	}
	var spec *firewall.HostSpec
	blocked := map[string]string{}
	var forbidden []string
	insp, _ := a.docker.(Inspector)
	var cgErr error
	if a.cfg.BlockHostNetwork {
		cgErr = a.sys.CgroupV2Unified()
	}
	switch {
	case !a.cfg.BlockHostNetwork:
		st.Enforcement = "off: --block-host-network is not set"
	case cgErr != nil:
		st.Enforcement = "unavailable: " + cgErr.Error()
	case insp == nil:
		st.Enforcement = "unavailable: containers cannot be inspected"
	default:
		var err error
		forbidden, err = a.forbiddenCgroups(ctx, insp, hosts)
		if err != nil {
			st.Enforcement = "unavailable: " + err.Error()
			break
		}
		st.Enforcement = "active"
		spec = &firewall.HostSpec{}
	}
	for _, c := range hosts {
		hc := HostContainer{ID: short(c.ID), Name: c.Name, TaskARN: c.Labels[LabelTaskARN], ECSContainer: c.Labels[LabelContainerName]}
		switch {
		case c.Name == ECSAgentName:
			hc.Reason = "the ECS agent needs IMDS: never blocked"
		case exempt[c.ID] != "":
			hc.Reason = "exempt (" + exempt[c.ID] + ")"
		case spec == nil:
			hc.Reason = "can reach IMDS: host network blocking is " + st.Enforcement
		default:
			path, err := a.containerCgroup(ctx, insp, c.ID)
			if err == nil {
				err = checkCgroup(path, forbidden)
			}
			hc.Cgroup = path
			if err != nil {
				hc.Reason = "can reach IMDS: " + err.Error()
				break
			}
			spec.Cgroups = append(spec.Cgroups, path)
			hc.Blocked = true
			hc.Reason = "host network: blocked in " + firewall.HostChain + " by its cgroup"
			blocked[c.ID] = hc.Reason
		}
		st.Containers = append(st.Containers, hc)
	}
	return st, spec, blocked
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

// forbiddenCgroups are the cgroups that must never be matched: the agent's,
// PID 1's and the ECS agent container's.
func (a *Agent) forbiddenCgroups(ctx context.Context, insp Inspector, hosts []Container) ([]string, error) {
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
		if c.Name != ECSAgentName {
			continue
		}
		p, err := a.containerCgroup(ctx, insp, c.ID)
		if err != nil {
			errs = append(errs, fmt.Errorf("the ECS agent's cgroup: %w", err))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

func (a *Agent) containerCgroup(ctx context.Context, insp Inspector, id string) (string, error) {
	d, err := insp.Inspect(ctx, id)
	if err != nil {
		return "", err
	}
	if d.Pid <= 0 {
		return "", fmt.Errorf("container %s has no pid", short(id))
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
