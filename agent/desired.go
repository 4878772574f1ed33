package agent

import (
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// The pure part of a pass: no I/O, table-tested (desired_test.go,
// tasks_test.go, verdict_test.go, TestClassify, TestExemptions). desired
// turns what the pass read (the snapshot, the cgroups, the ECS files, the
// task namespaces' routes) into the firewall's spec, layer 1's intent and
// the task repairs; judge turns that plan and what applying it found into
// each task's and container's status (classify) and the verdict.

// world is everything a pass read before deciding what to apply.
type world struct {
	cfg  Config
	snap docker.Snapshot
	// enforce: the pass applies the plan (a check only compares).
	enforce bool
	host    hostReads
	// hostLast is what the last sync knew of host-network cgroups.
	hostLast map[string]hostCgroup
	ecs      ecsRead
	// tasks are the awsvpc tasks the snapshot locates, taskReads their
	// namespaces' routes by pause container ID; nsUnavailable: no
	// namespace can be read here (no inspecting client or no netlink).
	tasks         []*awsvpcTask
	taskReads     map[string]nsRead
	nsUnavailable bool
}

// plan is the desired state a world asks for, before anything is applied.
type plan struct {
	spec       firewall.Spec
	families   []firewall.Family
	exempt     map[string]string
	exemptions []status.Exemption
	host       hostPlan
	// layer1 is the host's intent for imdsguard's own nftables tables.
	layer1 firewall.Intent
	// ecs is what the ECS configuration says, ecsIssues what the verdict
	// must name of it, ecsErr a one-shot command's failed read.
	ecs       status.ECSStatus
	ecsIssues []string
	ecsErr    error
	// tasks is what each awsvpc task's namespace must get (tasks.go).
	tasks taskPlan
	// issues are what the verdict must name of the reads.
	issues []string
}

// desired computes the firewall's spec (exemptions, host-network cgroups)
// from w. It is pure. Without a container list every exemption goes (fail
// closed) and the host chain is left as it is (dropping its rules would
// unblock containers that may still run).
func desired(w world) plan {
	containers := w.snap.Containers
	if w.snap.Err != nil {
		containers = nil // a partial list must not keep an exemption alive
	}
	var p plan
	var exemptSpec []firewall.Exemption
	p.exempt, p.exemptions, exemptSpec = exemptions(w.cfg, containers)
	p.host = desiredHost(w.cfg, containers, p.exempt, w.snap.Err == nil, w.host, w.hostLast)
	if w.snap.Err != nil {
		p.host.spec = nil
		p.issues = append(p.issues, "Docker cannot be asked, so running containers are unknown: "+w.snap.Err.Error())
	}
	p.spec = firewall.Spec{Action: w.cfg.Action, Exempt: exemptSpec, Host: p.host.spec}
	p.families = w.cfg.Families()
	p.layer1 = nftIntent(w.cfg, p.spec)
	p.ecs, p.ecsIssues, p.ecsErr = ecsStatus(w.cfg.ECSConfigMode, w.snap.Containers, w.ecs)
	p.tasks = planTasks(w.cfg, w.tasks, w.taskReads, p.exempt, w.enforce, w.nsUnavailable)
	return p
}

// observed is what applying the plan and verifying it found.
type observed struct {
	// enforced per family; a missing key means the family is disabled.
	enforced map[string]bool
	rules    map[string]*firewall.Ruleset
	// hostVerified: every family was verified in place, and with it the
	// host chain; until then no host-network container counts as blocked.
	hostVerified bool
	// nft is layer 1 as applied and verified (nil: off).
	nft *status.NFTStatus
	// tasks is what applying each awsvpc task's intent found.
	tasks map[string]taskResult
}

// judgement is what a pass publishes of the plan and what it observed.
type judgement struct {
	containers []status.ContainerStatus
	verdict    string
	reasons    []string
	awsvpc     status.AWSVPCStatus
	// taskErrs fail the sync (retried): a task that could not be checked
	// or repaired.
	taskErrs []string
}

// judge is the pure end of a pass: each task's and container's status and
// the verdict, from the plan and what was observed after applying it.
func judge(containers []docker.Container, p plan, o observed) judgement {
	var j judgement
	blocked := p.host.blocked
	if !o.hostVerified {
		blocked = nil
	}
	// A family is blocked when either layer holds it (layer1.go).
	enforced := maps.Clone(o.enforced)
	if enforced == nil {
		enforced = map[string]bool{}
	}
	layers := mergeLayers(p.families, enforced, o.nft)
	var tasks map[string]status.AWSVPCTask
	j.awsvpc, tasks = judgeTasks(p.tasks, o.tasks)
	taskIssues, taskErrs := taskIssues(j.awsvpc)
	j.taskErrs = taskErrs
	// What the running ECS agent applies decides for tasks whose namespace
	// was not checked.
	awsvpcBlock := p.ecs.AWSVPCBlockIMDS
	if p.ecs.RunningAgent != nil {
		awsvpcBlock = p.ecs.RunningAgent.AWSVPCBlockIMDS
	}
	j.containers = classify(picture{enforced: enforced, containers: containers, awsvpcBlock: awsvpcBlock,
		awsvpc: tasks, hostBlocked: blocked, exempt: p.exempt, rules: o.rules})
	j.verdict, j.reasons = verdict(enforced, j.containers, slices.Concat(p.issues, layers, p.ecsIssues, taskIssues))
	return j
}

// picture is everything one sync learned; classify turns it into a verdict.
type picture struct {
	// enforced per family; a missing key means the family is disabled.
	enforced map[string]bool
	// containers is nil when Docker could not be asked.
	containers []docker.Container
	// awsvpcBlock is what the running ECS agent applies to new awsvpc
	// tasks (or, with no agent running, what it will apply when it starts).
	// It decides only for tasks whose namespace was not checked.
	awsvpcBlock bool
	// awsvpc holds each checked task by pause container ID.
	awsvpc map[string]status.AWSVPCTask
	// hostBlocked says why a host-network container is blocked, by ID.
	hostBlocked map[string]string
	// exempt says why a container may reach IMDS, by ID.
	exempt map[string]string
	// rules is each family's ruleset as read in this pass, by family; the
	// evaluator judges every bridged container's own packet with it.
	rules map[string]*firewall.Ruleset
}

// classify decides, for every container, whether it can reach IMDS. It is
// pure: everything it needs is in p.
func classify(p picture) []status.ContainerStatus {
	ix := docker.NewIndex(p.containers)
	out := make([]status.ContainerStatus, 0, len(p.containers))
	for _, c := range p.containers {
		class, _ := docker.ModeClass(c)
		st := status.ContainerStatus{
			ID: docker.Short(c.ID), Name: c.Name, NetworkMode: class,
			TaskARN: c.Labels[docker.LabelTaskARN], ECSContainer: c.Labels[docker.LabelContainerName],
		}
		var allowed bool
		st.Protected, st.Reason, allowed = protection(p, c, ix, 0)
		if !st.Protected && allowed {
			st.Expected = true
		}
		if class == docker.ModeHost && c.Name == docker.ECSAgentName {
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
func protection(p picture, c docker.Container, ix docker.Index, depth int) (prot bool, why string, allowed bool) {
	class, target := docker.ModeClass(c)
	switch class {
	case docker.ModeHost:
		if why, ok := p.hostBlocked[c.ID]; ok {
			return true, why, false
		}
		if why := p.exempt[c.ID]; why != "" {
			return false, "host network, exempt (" + why + ")", true
		}
		return false, "host network: traffic leaves from the host itself, which DOCKER-USER never sees", false
	case docker.ModeNone:
		return true, "no network", false
	case docker.ModeAWSVPC:
		if t, ok := p.awsvpc[c.ID]; ok {
			return t.Protected, t.Reason, !t.Protected && p.exempt[c.ID] != ""
		}
		if p.awsvpcBlock {
			return true, "awsvpc task: ECS_AWSVPC_BLOCK_IMDS is in effect for tasks the ECS agent starts", false
		}
		return false, "awsvpc task: ECS_AWSVPC_BLOCK_IMDS is not in effect in the running ECS agent", false
	case docker.ModeContainer:
		owner, ok := ix.Find(target)
		if !ok || depth > 8 {
			return false, fmt.Sprintf("shares the network of %s, which is not running", docker.Short(target)), false
		}
		if o, ok := ix.Owner(owner); ok {
			if oc, _ := docker.ModeClass(o); oc == docker.ModeHost {
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
func verdict(enforced map[string]bool, containers []status.ContainerStatus, issues []string) (string, []string) {
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
		return status.VerdictExposed, reasons
	case len(reasons) > 0:
		return status.VerdictDegraded, reasons
	}
	return status.VerdictProtected, nil
}
