package agent

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/imdsguard/imdsguard/firewall"
)

// Verdicts, from best to worst.
const (
	VerdictProtected = "protected"
	VerdictDegraded  = "degraded"
	VerdictExposed   = "exposed"
)

// ECS labels Docker carries for ECS-managed containers.
const (
	LabelTaskARN       = "com.amazonaws.ecs.task-arn"
	LabelContainerName = "com.amazonaws.ecs.container-name"
	LabelTaskFamily    = "com.amazonaws.ecs.task-definition-family"
	// PauseContainerName is the ECS container name of an awsvpc task's
	// network-namespace holder.
	PauseContainerName = "~internal~ecs~pause"
	// ECSAgentName is the container ecs-init runs the ECS agent in.
	ECSAgentName = "ecs-agent"
)

// Network modes as Docker reports them in HostConfig.NetworkMode.
const (
	ModeBridge    = "bridge"
	ModeHost      = "host"
	ModeNone      = "none"
	ModeContainer = "container"
	ModeAWSVPC    = "awsvpc"
	ModeUserNet   = "user-defined"
)

// ContainerStatus is one running container as status reports it.
type ContainerStatus struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	NetworkMode string `json:"network_mode"`
	// Protected is true when this container cannot reach IMDS.
	Protected bool   `json:"protected"`
	Reason    string `json:"reason"`
	// Expected marks a container that reaches IMDS by design (the ECS
	// agent): reported, but not counted against the host.
	Expected     bool   `json:"expected,omitempty"`
	TaskARN      string `json:"task_arn,omitempty"`
	ECSContainer string `json:"ecs_container,omitempty"`
}

// picture is everything one sync learned; classify turns it into a verdict.
type picture struct {
	// enforced per family; a missing key means the family is disabled.
	enforced map[string]bool
	// containers is nil when Docker could not be asked.
	containers []Container
	// awsvpcBlock is what the running ECS agent applies to new awsvpc
	// tasks (or, with no agent running, what it will apply when it starts).
	// It decides only for tasks whose namespace was not checked.
	awsvpcBlock bool
	// awsvpc holds each checked task by pause container ID.
	awsvpc map[string]AWSVPCTask
	// hostBlocked says why a host-network container is blocked, by ID.
	hostBlocked map[string]string
	// exempt says why a container may reach IMDS, by ID.
	exempt map[string]string
	// rules is each family's ruleset as read in this pass, by family; the
	// evaluator judges every bridged container's own packet with it.
	rules map[string]*firewall.Ruleset
}

// modeClass folds Docker's network mode strings into the classes that
// decide protection: "default" and named networks are bridges too.
func modeClass(c Container) (class, target string) {
	m := c.NetworkMode
	switch {
	case m == "" || m == "default" || m == ModeBridge:
		return ModeBridge, ""
	case m == ModeHost:
		return ModeHost, ""
	case m == ModeNone:
		if c.Labels[LabelTaskARN] != "" {
			return ModeAWSVPC, ""
		}
		return ModeNone, ""
	case strings.HasPrefix(m, "container:"):
		return ModeContainer, strings.TrimPrefix(m, "container:")
	}
	return ModeUserNet, ""
}

// index finds containers by ID, ID prefix or name, as Docker resolves
// container:<target>.
type index struct {
	byID, byName map[string]Container
}

func newIndex(cs []Container) index {
	ix := index{byID: make(map[string]Container, len(cs)), byName: make(map[string]Container, len(cs))}
	for _, c := range cs {
		ix.byID[c.ID] = c
		ix.byName[c.Name] = c
	}
	return ix
}

func (ix index) find(target string) (Container, bool) {
	if c, ok := ix.byID[target]; ok {
		return c, true
	}
	if c, ok := ix.byName[target]; ok {
		return c, true
	}
	for id, c := range ix.byID {
		if strings.HasPrefix(id, target) {
			return c, true
		}
	}
	return Container{}, false
}

// owner follows container:<target> chains to the container that owns the
// network namespace.
func (ix index) owner(c Container) (Container, bool) {
	for range 8 {
		class, target := modeClass(c)
		if class != ModeContainer {
			return c, true
		}
		next, ok := ix.find(target)
		if !ok {
			return Container{}, false
		}
		c = next
	}
	return Container{}, false
}

// classify decides, for every container, whether it can reach IMDS. It is
// pure: everything it needs is in p.
func classify(p picture) []ContainerStatus {
	ix := newIndex(p.containers)
	out := make([]ContainerStatus, 0, len(p.containers))
	for _, c := range p.containers {
		class, _ := modeClass(c)
		st := ContainerStatus{
			ID: short(c.ID), Name: c.Name, NetworkMode: class,
			TaskARN: c.Labels[LabelTaskARN], ECSContainer: c.Labels[LabelContainerName],
		}
		var allowed bool
		st.Protected, st.Reason, allowed = protection(p, c, ix, 0)
		if !st.Protected && allowed {
			st.Expected = true
		}
		if class == ModeHost && c.Name == ECSAgentName {
			st.Expected = true
			st.Reason = "the ECS agent runs on the host network and needs IMDS"
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// protection follows container:<id> chains to the namespace owner. allowed
// says the container reaches IMDS by an exemption: the operator's choice,
// reported but not counted against the host.
func protection(p picture, c Container, ix index, depth int) (prot bool, why string, allowed bool) {
	class, target := modeClass(c)
	switch class {
	case ModeHost:
		if why, ok := p.hostBlocked[c.ID]; ok {
			return true, why, false
		}
		if why := p.exempt[c.ID]; why != "" {
			return false, "host network, exempt (" + why + ")", true
		}
		return false, "host network: traffic leaves from the host itself, which DOCKER-USER never sees", false
	case ModeNone:
		return true, "no network", false
	case ModeAWSVPC:
		if t, ok := p.awsvpc[c.ID]; ok {
			return t.Protected, t.Reason, !t.Protected && p.exempt[c.ID] != ""
		}
		if p.awsvpcBlock {
			return true, "awsvpc task: ECS_AWSVPC_BLOCK_IMDS is in effect for tasks the ECS agent starts", false
		}
		return false, "awsvpc task: ECS_AWSVPC_BLOCK_IMDS is not in effect in the running ECS agent", false
	case ModeContainer:
		owner, ok := ix.find(target)
		if !ok || depth > 8 {
			return false, fmt.Sprintf("shares the network of %s, which is not running", short(target)), false
		}
		if o, ok := ix.owner(owner); ok {
			if oc, _ := modeClass(o); oc == ModeHost {
				// The host's namespace: only this container's own cgroup
				// rule blocks it, not its owner's.
				if why, ok := p.hostBlocked[c.ID]; ok {
					return true, fmt.Sprintf("shares the network of %s (host network): %s", owner.Name, why), false
				}
				return false, fmt.Sprintf("shares the network of %s (host network) and has no rule of its own", owner.Name), false
			}
		}
		prot, why, allowed := protection(p, owner, ix, depth+1)
		return prot, fmt.Sprintf("shares the network of %s: %s", owner.Name, why), allowed
	}
	// Bridge and user-defined networks: forwarded traffic, DOCKER-USER.
	v4, v6 := p.enforced["ipv4"], p.enforced["ipv6"]
	_, v6On := p.enforced["ipv6"]
	switch {
	case !v4:
		return false, "bridged, but the IPv4 block is not in place", false
	case len(c.IPv6) > 0 && !v6On:
		return false, "bridged with IPv6, and IPv6 blocking is disabled (--ipv6=false)", false
	case len(c.IPv6) > 0 && !v6:
		return false, "bridged with IPv6, but the IPv6 block is not in place", false
	}
	// The family's probe was dropped; now this container's own packets,
	// which rules naming its address or bridge port may treat otherwise.
	why = "bridged: DOCKER-USER sends IMDS traffic to IMDS-GUARD"
	for _, a := range slices.Concat(c.IPv4, c.IPv6) {
		a = a.Unmap()
		fam := firewall.IPv4
		if a.Is6() {
			fam = firewall.IPv6
		}
		rs := p.rules[string(fam)]
		if rs == nil {
			continue // tests without a ruleset: the probe's verdict stands
		}
		pkt := firewall.Packet{Family: fam, Src: a}
		if port, ok := c.Ports[a]; ok {
			pkt.BridgePort, pkt.InIface = port.Name, port.Bridge
		}
		res := rs.Evaluate(pkt)
		if res.Dropped {
			why = "bridged: " + res.String()
			continue
		}
		// A pass by an ACCEPT in IMDS-GUARD is an exemption the daemon
		// wrote, whichever command is looking.
		byDaemon := res.Table == firewall.Table && res.Chain == firewall.Chain
		if w := p.exempt[c.ID]; w != "" || byDaemon {
			if w == "" {
				w = "an ACCEPT in " + firewall.Chain + " written by the daemon"
			}
			return false, fmt.Sprintf("bridged, exempt (%s): %s %s", w, a, res), true
		}
		return false, fmt.Sprintf("bridged, but its packet from %s is not dropped: %s", a, res), false
	}
	if w := p.exempt[c.ID]; w != "" {
		why = "exempt (" + w + ") but blocked all the same: " + why
	}
	return true, why, false
}

// verdict sums up the host. exposed: the bridge block itself is not in
// force. degraded: the block holds but something is missing or unknown — a
// container that can reach IMDS, Docker unreachable, a failed sync.
func verdict(enforced map[string]bool, containers []ContainerStatus, issues []string) (string, []string) {
	var reasons []string
	exposed := false
	for _, fam := range []string{"ipv4", "ipv6"} {
		if ok, on := enforced[fam]; on && !ok {
			reasons = append(reasons, fmt.Sprintf("the %s block is not in place", fam))
			exposed = true
		}
	}
	for _, c := range containers {
		if !c.Protected && !c.Expected {
			reasons = append(reasons, fmt.Sprintf("container %s can reach IMDS: %s", c.Name, c.Reason))
		}
	}
	reasons = append(reasons, issues...)
	switch {
	case exposed:
		return VerdictExposed, reasons
	case len(reasons) > 0:
		return VerdictDegraded, reasons
	}
	return VerdictProtected, nil
}
