package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// pass takes the snapshot of the running containers and, with enforce,
// fixes what is wrong. Nothing in a pass calls Docker: the daemon's
// snapshot comes from its view, so no repair waits for dockerd; Docker
// being down never stops enforcement, it only withdraws every exemption.
// Its stages, in order: the reads (snapshot, host-network cgroups, ECS
// files, task namespaces' routes), the pure desired state (desired), apply
// and verify (layer 2, layer 1, task namespaces), the pure judgement
// (judge), publish.
func (a *Agent) pass(ctx context.Context, l docker.Snapshot, enforce bool) (status.Status, error) {
	start := time.Now()
	st := status.Status{CheckedAt: start, Version: a.version, Source: "daemon"}
	var errs []string
	var hard []error
	// Where a slow sync spends its time, for status and the benchmarks.
	stages := map[string]float64{}
	mark := time.Now()
	lap := func(name string) {
		now := time.Now()
		stages[name] += float64(now.Sub(mark).Microseconds()) / 1000
		mark = now
	}

	// 1. Reads.
	containers, dockerErr := l.Containers, l.Err
	st.Docker = status.DockerStatus{Reachable: dockerErr == nil}
	if !l.At.IsZero() {
		st.Docker.ListedAt, st.Docker.ListMS = l.At, float64(l.Took.Microseconds())/1000
	}
	if dockerErr != nil {
		st.Docker.Error = dockerErr.Error()
	}
	lap("docker")
	w := world{cfg: a.cfg, snap: l, enforce: enforce}
	a.mu.Lock()
	w.hostLast = a.hostCgroups
	a.mu.Unlock()
	w.host = a.readHost(containers, l.CanInspect, w.hostLast)
	lap("containers")
	w.ecs = a.readECS(ctx, enforce)
	lap("ecs")
	w.tasks, w.nsUnavailable = awsvpcTasks(containers), !l.CanInspect || a.namespaces == nil
	if !w.nsUnavailable {
		w.taskReads = a.readTasks(w.tasks)
	}
	lap("routes")

	// 2. The desired state (desired.go), pure.
	plan := desired(w)
	if enforce {
		a.logExemptions(plan.exemptions, containers, dockerErr)
	}
	if plan.host.remember {
		a.mu.Lock()
		a.hostCgroups = plan.host.known
		a.mu.Unlock()
	}
	host := plan.host.status
	if plan.host.err != nil {
		errs = append(errs, plan.host.err.Error())
	}
	st.Exemptions, st.HostNetwork, st.ECSConfig = plan.exemptions, &host, plan.ecs
	lap("containers")

	// 3. Apply and verify: layer 2 (iptables), layer 1 (nftables), then
	// the task namespaces.
	if enforce && plan.spec.Host != nil && len(plan.host.stale) > 0 {
		a.reinsertHost(ctx, plan.spec, plan.host.stale)
	}
	fwStates, fwErr := a.firewall(ctx, enforce, plan.spec)
	if err := a.hostChainOff(ctx, enforce, &host); err != nil {
		errs = append(errs, err.Error())
	}
	enforced, rules := a.fillFirewall(&st, fwStates)
	if fwErr != nil {
		st.Firewall.Error = fwErr.Error()
		errs = append(errs, fwErr.Error())
		if len(fwStates) == 0 {
			hard = append(hard, fwErr)
		}
	}
	lap("firewall")
	st.Firewall.NFTables = a.syncLayer1(ctx, enforce, plan.layer1)
	lap("nftables")
	taskResults, watch := a.applyTasks(ctx, plan.tasks)
	if dockerErr == nil { // without a listing every task keeps its layer-1 socket
		a.pruneTaskLayers(plan.tasks.running())
	}
	a.mu.Lock()
	runCtx := a.runCtx
	a.mu.Unlock()
	if enforce && runCtx != nil && a.namespaces != nil && dockerErr == nil {
		a.watchNamespaces(runCtx, watch)
	}
	lap("awsvpc")

	// 4. The judgement (desired.go), pure.
	j := judge(containers, plan, observed{enforced: enforced, rules: rules,
		hostVerified: fwAllEnforced(fwStates), nft: st.Firewall.NFTables, tasks: taskResults})
	st.AWSVPC, st.Containers, st.Verdict, st.Reasons = &j.awsvpc, j.containers, j.verdict, j.reasons
	// The daemon's ECS read failed in its own loop: the sync is not fully
	// verified (health says so), but retrying it cannot fix a file.
	var unverified []string
	if plan.ecsErr == nil && plan.ecs.Error != "" {
		unverified = append(unverified, plan.ecs.Error)
	}
	if plan.ecsErr != nil {
		errs = append(errs, plan.ecsErr.Error())
	}
	errs = append(errs, j.taskErrs...)

	// 5. Publish: what the attempts reader attributes by, and the sync.
	a.publishOwners(containers, dockerErr == nil)
	a.fillAttempts(&st)
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

// fillFirewall puts layer 2's states in st and returns, per family, whether
// its block was verified (a missing key: disabled) and its ruleset.
func (a *Agent) fillFirewall(st *status.Status, fwStates []firewall.FamilyState) (map[string]bool, map[string]*firewall.Ruleset) {
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
	// Enabled follows the configuration, not the states returned: a
	// family with no state is enabled and not enforced (BlockInPlace).
	st.Firewall.IPv4.Enabled = true
	if a.cfg.IPv6 {
		st.Firewall.IPv6.Enabled = true
	} else {
		st.Firewall.IPv6 = status.FamilyStatus{Enabled: a.ipv6NA != "", NotApplicable: a.ipv6NA}
	}
	return enforced, rules
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
