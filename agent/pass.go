package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// pass takes the snapshot of the running containers and, with enforce,
// fixes what is wrong. The snapshot comes first because the firewall's
// spec (exemptions, host-network cgroups) follows from it; the daemon's
// comes from its view, so no repair waits for dockerd, and nothing in a
// pass calls Docker. Docker being down never stops enforcement, it only
// withdraws every exemption. Its order: the reads (snapshot, cgroups),
// the pure desired state (desired), apply and verify (firewall, layer 1,
// task namespaces), the pure judgement (judge), publish.
func (a *Agent) pass(ctx context.Context, l docker.Snapshot, enforce bool) (status.Status, error) {
	start := time.Now()
	st := status.Status{CheckedAt: start, Version: a.version, Source: "daemon"}
	var errs, issues []string
	var hard []error
	// Where a slow sync spends its time, for status and the benchmarks.
	stages := map[string]float64{}
	mark := time.Now()
	lap := func(name string) {
		now := time.Now()
		stages[name] += float64(now.Sub(mark).Microseconds()) / 1000
		mark = now
	}

	// Containers.
	containers, dockerErr := l.Containers, l.Err
	lap("docker")
	st.Docker = status.DockerStatus{Reachable: dockerErr == nil}
	if !l.At.IsZero() {
		st.Docker.ListedAt, st.Docker.ListMS = l.At, float64(l.Took.Microseconds())/1000
	}
	if dockerErr != nil {
		st.Docker.Error = dockerErr.Error()
	}

	// What the firewall must hold follows from the running containers
	// (desired.go): everything is read first, then computed.
	a.mu.Lock()
	last := a.hostCgroups
	a.mu.Unlock()
	plan := desired(world{cfg: a.cfg, snap: l, host: a.readHost(containers, l.CanInspect, last), hostLast: last})
	exempt, host, spec := plan.exempt, plan.host.status, plan.spec
	if enforce {
		a.logExemptions(plan.exemptions, containers, dockerErr)
	}
	if plan.host.remember {
		a.mu.Lock()
		a.hostCgroups = plan.host.known
		a.mu.Unlock()
	}
	if plan.host.err != nil {
		errs = append(errs, plan.host.err.Error())
	}
	st.Exemptions, st.HostNetwork = plan.exemptions, &host
	lap("containers")

	// Firewall.
	if enforce && spec.Host != nil && len(plan.host.stale) > 0 {
		a.reinsertHost(ctx, spec, plan.host.stale)
	}
	fwStates, fwErr := a.firewall(ctx, enforce, spec)
	if err := a.hostChainOff(ctx, enforce, &host); err != nil {
		errs = append(errs, err.Error())
	}
	lap("firewall")
	a.mu.Lock()
	st.Firewall = status.FirewallStatus{Backend: a.backend.Mode, Why: a.backend.Why, Action: string(a.cfg.Action)}
	a.mu.Unlock()
	enforced := map[string]bool{}
	for _, f := range a.cfg.Families() {
		enforced[string(f)] = false
	}
	rules := map[string]*firewall.Ruleset{}
	for _, fs := range fwStates {
		enforced[string(fs.Family)] = fs.Enforced
		if fs.Enforced {
			rules[string(fs.Family)] = fs.Rules
		}
		s := familyStatus(fs)
		a.mu.Lock()
		total := a.accumulate(fs)
		a.mu.Unlock()
		s.BlockedPackets, s.BlockedBytes = total[0], total[1]
		if fs.Family == firewall.IPv6 {
			st.Firewall.IPv6 = s
		} else {
			st.Firewall.IPv4 = s
		}
	}
	if fwErr != nil {
		st.Firewall.Error = fwErr.Error()
		errs = append(errs, fwErr.Error())
		if len(fwStates) == 0 {
			hard = append(hard, fwErr)
		}
	}
	// Enabled follows the configuration, not the states returned: a
	// family with no state is enabled and not enforced (BlockInPlace).
	st.Firewall.IPv4.Enabled = true
	if a.cfg.IPv6 {
		st.Firewall.IPv6.Enabled = true
	} else {
		st.Firewall.IPv6 = status.FamilyStatus{Enabled: a.ipv6NA != "", NotApplicable: a.ipv6NA}
	}
	// Layer 1 (layer1.go): either layer whole blocks every bridged container.
	st.Firewall.NFTables = a.syncLayer1(ctx, enforce, nftIntent(a.cfg, spec))
	issues = append(issues, mergeLayers(a.cfg, enforced, st.Firewall.NFTables)...)
	lap("nftables")

	// ECS configuration, and what the running ECS agent applies.
	ecs, ecsIssues, ecsErr := a.ecs(ctx, containers, enforce)
	lap("ecs")
	st.ECSConfig = ecs
	issues = append(issues, ecsIssues...)
	// The daemon's ECS read failed in its own loop: the sync is not fully
	// verified (health says so), but retrying it cannot fix a file.
	var unverified []string
	if ecsErr == nil && ecs.Error != "" {
		unverified = append(unverified, ecs.Error)
	}
	if ecsErr != nil {
		errs = append(errs, ecsErr.Error())
	}
	awsvpcBlock := ecs.AWSVPCBlockIMDS
	if ecs.RunningAgent != nil {
		awsvpcBlock = ecs.RunningAgent.AWSVPCBlockIMDS
	}

	// awsvpc tasks: their own namespaces, after the firewall so a slow or
	// failing namespace never delays the bridge block.
	awsvpc, tasks, watch := a.awsvpc(ctx, containers, exempt, enforce, l.CanInspect)
	if dockerErr == nil { // without a listing every task keeps its layer-1 socket
		a.pruneTaskLayers(tasks)
	}
	lap("awsvpc")
	st.AWSVPC = &awsvpc
	for _, t := range awsvpc.Tasks {
		if t.Error != "" {
			// Retried with backoff; often a task that stopped mid-sync.
			errs = append(errs, fmt.Sprintf("awsvpc task %s: %s", t.Pause, t.Error))
		}
		if t.Exempt == "" && len(t.NetAdmin) > 0 && awsvpc.Mode != ECSModeEnforce {
			issues = append(issues, fmt.Sprintf("awsvpc task %s: %s can delete its IMDS blackhole route and nothing would repair it (--awsvpc-mode check)", t.Pause, strings.Join(t.NetAdmin, ", ")))
		}
	}
	a.mu.Lock()
	runCtx := a.runCtx
	a.mu.Unlock()
	if enforce && runCtx != nil && a.namespaces != nil && dockerErr == nil {
		a.watchNamespaces(runCtx, watch)
	}

	a.publishOwners(containers, dockerErr == nil)
	a.fillAttempts(&st)

	st.Containers, st.Verdict, st.Reasons = judge(containers, plan, observed{enforced: enforced, rules: rules,
		hostVerified: fwAllEnforced(fwStates), awsvpc: tasks, awsvpcBlock: awsvpcBlock, issues: issues})

	a.mu.Lock()
	st.Repairs, st.RepairsBy = a.repairs, a.repairCounts()
	a.mu.Unlock()
	dur := time.Since(start)
	lap("report")
	sum := &status.SyncSummary{At: start, DurationMS: float64(dur.Microseconds()) / 1000, StagesMS: stages, OK: len(errs)+len(unverified) == 0}
	if !sum.OK {
		sum.Error = fmt.Sprint(append(errs, unverified...))
	}
	st.LastSync = sum
	if len(hard) > 0 {
		return st, errors.Join(hard...)
	}
	if len(errs) > 0 {
		return st, &partialError{msgs: errs}
	}
	return st, nil
}

// take is a one-shot command's snapshot; the daemon's comes from its view.
func (a *Agent) take(ctx context.Context) docker.Snapshot {
	if a.lister == nil {
		return docker.Snapshot{Err: errors.New("no Docker client")}
	}
	return a.lister.Take(ctx)
}

// snapshot is the daemon's last listing. Any error comes with no
// containers: a partial list must not keep an exemption alive.
func (a *Agent) snapshot(ctx context.Context) docker.Snapshot {
	if a.view == nil {
		return a.take(ctx)
	}
	// The view may still hold a listing from before Docker went away.
	a.mu.Lock()
	err := a.dockerErr
	a.mu.Unlock()
	if err != nil {
		return docker.Snapshot{Err: err}
	}
	return a.view.Get(ctx, a.maxListingAge())
}

// partialError means the pass completed but something in it failed: the
// daemon retries soon, one-shot commands still print what they found.
type partialError struct{ msgs []string }

func (e *partialError) Error() string { return fmt.Sprint(e.msgs) }

// IsPartial reports whether err only says part of a pass failed.
func IsPartial(err error) bool {
	var p *partialError
	return errors.As(err, &p)
}

// fwAllEnforced reports whether every family was verified in place.
func fwAllEnforced(states []firewall.FamilyState) bool {
	for _, st := range states {
		if !st.Enforced {
			return false
		}
	}
	return len(states) > 0
}

// firewall gets a Firewall (detecting the backend on first use) and checks
// or enforces spec.
func (a *Agent) firewall(ctx context.Context, enforce bool, spec firewall.Spec) ([]firewall.FamilyState, error) {
	a.mu.Lock()
	fw := a.fw
	a.mu.Unlock()
	if fw == nil {
		f, b, err := a.newFW()
		if err != nil {
			return nil, err
		}
		a.mu.Lock()
		a.fw, a.backend, fw = f, b, f
		a.mu.Unlock()
		a.log.WithFields(logrus.Fields{"backend": b.Mode, "why": b.Why}).Info("using iptables backend")
	}
	fw.SetSpec(spec)
	if !enforce {
		return fw.Check(ctx)
	}
	states, err := fw.Ensure(ctx)
	a.recordRepairs(states)
	return states, err
}
