// Package agent is imdsguard's reconcile loop: it computes the desired state
// from the full picture (firewall, ECS configuration, running containers),
// applies it, verifies it, and reports the truth. Events and timers only
// trigger a sync; no event is ever trusted to carry state.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/ecsconfig"
	"github.com/imdsguard/imdsguard/firewall"
)

// Firewall is what the loop needs of the firewall package.
type Firewall interface {
	Ensure(ctx context.Context) ([]firewall.FamilyState, error)
	Check(ctx context.Context) ([]firewall.FamilyState, error)
	// SetSpec sets the desired state for the next Ensure or Check.
	SetSpec(firewall.Spec)
}

// FirewallFactory detects the iptables backend and builds a Firewall. The
// agent calls it until it succeeds, so a host without iptables yet (or a
// broken PATH) is reported and retried rather than fatal.
type FirewallFactory func() (Firewall, firewall.Backend, error)

// RealFirewall is the FirewallFactory for the host's iptables.
func RealFirewall(cfg Config) FirewallFactory {
	return func() (Firewall, firewall.Backend, error) {
		b, err := firewall.DetectBackend(cfg.IPTablesBackend)
		if err != nil {
			return nil, b, fmt.Errorf("detecting the iptables backend: %w", err)
		}
		m, err := firewall.NewManagerFor(b, firewall.Spec{Action: cfg.Action}, cfg.Families()...)
		if err != nil {
			return nil, b, fmt.Errorf("iptables-%s: %w", b.Mode, err)
		}
		return m, b, nil
	}
}

// Agent is the daemon's state. One-shot commands use the same code through
// Once.
type Agent struct {
	cfg     Config
	log     *logrus.Entry
	newFW   FirewallFactory
	docker  Docker
	hooks   Hooks
	version string
	metrics *metrics
	runner  *runner
	// view and lister exist in the daemon only: one-shot commands list
	// the containers themselves.
	view     *containerView
	lister   *runner
	watchNFT func(ctx context.Context, changed func()) error
	// watchFirewalld follows firewalld's reloads (firewalld.go).
	watchFirewalld func(ctx context.Context, changed func()) error
	// The ECS configuration's own loop (ecsloop.go), daemon only:
	// one-shot commands read the files themselves, with the same deadline.
	ecsView   *ecsView
	ecsReader *boundedReader
	ecsRunner *runner
	ecsWatch  *ecsWatch
	ecsErrMsg string // the last read's error, to log each change once

	mu         sync.Mutex
	fw         Firewall
	backend    firewall.Backend
	dockerErr  error
	dockerSeen bool
	status     Status
	// statusJSON is status encoded once per sync: on a host with hundreds
	// of containers, encoding on every request cost more CPU than the
	// syncs themselves, and a flood of requests must cost only the copy.
	statusJSON  []byte
	repairs     uint64
	blocked     map[firewall.Family][2]uint64 // accumulated since start
	lastCounts  map[string][2]uint64          // last counters seen, by "family/chain"
	ready       bool
	lastSuccess time.Time

	namespaces Namespaces
	sys        System
	// ports finds exempt containers' bridge ports (in the lister).
	ports PortFinder
	// granted are the exemptions in force after the last enforcing pass,
	// by short ID, so granting and withdrawing is logged once.
	granted map[string]Exemption
	// verdictSeen is the verdict last published, for transition logs.
	verdictSeen string
	// routesSeen marks awsvpc tasks (by pause ID) verified protected, so a
	// route that goes missing later is counted as drift.
	routesSeen map[string]bool
	watches    map[string]nsWatch
	runCtx     context.Context
	wg         sync.WaitGroup
	// l1 is imdsguard's own nftables tables (layer1.go), tasks1 the same
	// in awsvpc task namespaces (layer1_task.go); nil: off.
	l1     *layer1
	tasks1 *taskLayers

	// hostCgroups are the host-network containers' cgroups the last sync
	// blocked, by container ID: kept while a read fails (fail closed).
	hostCgroups map[string]hostCgroup
	// hostChainGone is the firewall with which, blocking off, the host
	// chain was seen gone (after Redetect a new one looks again).
	hostChainGone Firewall
}

// Options are the agent's collaborators.
type Options struct {
	Config   Config
	Log      *logrus.Entry
	Firewall FirewallFactory
	// Docker may be nil: the container picture is then reported unknown.
	Docker  Docker
	Hooks   Hooks
	Version string
	// WatchNFTables subscribes to nf_tables changes; nil disables it.
	WatchNFTables func(ctx context.Context, changed func()) error
	// WatchFirewalld follows firewalld's reloads on D-Bus; nil disables it.
	WatchFirewalld func(ctx context.Context, changed func()) error
	// Namespaces reaches awsvpc tasks' network namespaces; nil reports
	// their routes as unknown.
	Namespaces Namespaces
	// System reads cgroups for host-network blocking; nil is the machine.
	System System
	// Ports finds exempt containers' bridge ports; nil is rtnetlink.
	Ports PortFinder
	// NFTables opens layer 1, imdsguard's own nftables tables; nil: off.
	NFTables NFTFactory
}

// New builds an agent. Nothing touches the system until Once or Run.
func New(o Options) *Agent {
	a := &Agent{
		cfg: o.Config, log: o.Log, newFW: o.Firewall, docker: o.Docker, hooks: o.Hooks,
		version: o.Version, watchNFT: o.WatchNFTables,
		blocked: map[firewall.Family][2]uint64{}, lastCounts: map[string][2]uint64{},
		namespaces: o.Namespaces, sys: o.System, routesSeen: map[string]bool{}, watches: map[string]nsWatch{},
		ports: o.Ports,
	}
	a.watchFirewalld = o.WatchFirewalld
	if a.ports == nil {
		a.ports = netlinkPorts{}
	}
	if a.sys == nil {
		a.sys = realSystem{}
	}
	if o.NFTables != nil {
		a.l1 = &layer1{open: o.NFTables, dockerNFT: firewall.DockerNFTables}
		a.tasks1 = &taskLayers{open: openTaskNFT, m: map[string]*firewall.NFTLayer{}}
	}
	if a.namespaces == nil {
		ns, err := NewNamespaces()
		if err != nil {
			// Without the host's identity no namespace is safe to touch.
			o.Log.WithError(err).Warn("awsvpc task namespaces will not be checked")
		} else {
			a.namespaces = ns
		}
	}
	a.status = Status{
		Verdict: VerdictDegraded, Reasons: []string{"starting: no sync has completed yet"},
		Source: "daemon", Version: o.Version, Firewall: FirewallStatus{Action: string(o.Config.Action)},
	}
	return a
}

// Once runs a single pass. With enforce it repairs the firewall (and, in
// enforce mode, ecs.config); without, it only reads. It returns the status
// and an error when something could not be checked at all.
func (a *Agent) Once(ctx context.Context, enforce bool) (*Status, error) {
	st, err := a.pass(ctx, enforce)
	st.Source = "check"
	if enforce {
		st.Source = "apply"
	}
	return &st, err
}

// pass gathers the whole picture once and, with enforce, fixes what is
// wrong. The container list comes first because the firewall's spec
// (exemptions, host-network cgroups) follows from it; the daemon reads it
// from its view, so no repair waits for dockerd. Docker being down never
// stops enforcement, it only withdraws every exemption, and each Docker
// call is bounded by dockerTimeout.
func (a *Agent) pass(ctx context.Context, enforce bool) (Status, error) {
	start := time.Now()
	st := Status{CheckedAt: start, Version: a.version, Source: "daemon"}
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
	l := a.containers(ctx)
	containers, dockerErr := l.containers, l.err
	lap("docker")
	st.Docker = DockerStatus{Reachable: dockerErr == nil}
	if !l.at.IsZero() {
		st.Docker.ListedAt, st.Docker.ListMS = l.at, float64(l.took.Microseconds())/1000
	}
	if dockerErr != nil {
		st.Docker.Error = dockerErr.Error()
		issues = append(issues, "Docker cannot be asked, so running containers are unknown: "+dockerErr.Error())
	}

	// What the firewall must hold follows from the running containers:
	// exemptions and host-network cgroups. Without a container list every
	// exemption goes (fail closed) and the host chain is left as it is
	// (dropping its rules would unblock containers that may still run).
	exempt, exemptList, exemptSpec := exemptions(a.cfg, containers)
	if enforce {
		a.logExemptions(exemptList, containers, dockerErr)
	}
	host, hostSpec, hostBlocked, hostStale, hostErr := a.hostNetwork(ctx, containers, exempt, dockerErr == nil)
	if dockerErr != nil {
		hostSpec = nil
	}
	if hostErr != nil {
		errs = append(errs, hostErr.Error())
	}
	st.Exemptions, st.HostNetwork = exemptList, &host
	lap("containers")

	// Firewall.
	spec := firewall.Spec{Action: a.cfg.Action, Exempt: exemptSpec, Host: hostSpec}
	if enforce && hostSpec != nil && len(hostStale) > 0 {
		a.reinsertHost(ctx, spec, hostStale)
	}
	fwStates, fwErr := a.firewall(ctx, enforce, spec)
	if err := a.hostChainOff(ctx, enforce, &host); err != nil {
		errs = append(errs, err.Error())
	}
	lap("firewall")
	a.mu.Lock()
	st.Firewall = FirewallStatus{Backend: a.backend.Mode, Why: a.backend.Why, Action: string(a.cfg.Action)}
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
	if !a.cfg.IPv6 {
		st.Firewall.IPv6 = FamilyStatus{Enabled: false}
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
	awsvpc, tasks, watch := a.awsvpc(ctx, containers, exempt, enforce)
	if dockerErr == nil { // without a listing every task keeps its layer-1 socket
		a.pruneTaskLayers(tasks)
	}
	lap("awsvpc")
	st.AWSVPC = &awsvpc
	if !fwAllEnforced(fwStates) {
		clear(hostBlocked) // the host chain is not verified
	}
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

	st.Containers = classify(picture{enforced: enforced, containers: containers, awsvpcBlock: awsvpcBlock,
		awsvpc: tasks, hostBlocked: hostBlocked, exempt: exempt, rules: rules})
	st.Verdict, st.Reasons = verdict(enforced, st.Containers, issues)

	a.mu.Lock()
	st.Repairs = a.repairs
	a.mu.Unlock()
	dur := time.Since(start)
	lap("report")
	sum := &SyncSummary{At: start, DurationMS: float64(dur.Microseconds()) / 1000, StagesMS: stages, OK: len(errs)+len(unverified) == 0}
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

// containers returns the running containers: the daemon's view, or for a
// one-shot command a list of its own. Any error comes with no containers: a
// partial list must not keep an exemption alive.
func (a *Agent) containers(ctx context.Context) listing {
	if a.docker == nil {
		return listing{err: errors.New("no Docker client")}
	}
	if a.view == nil {
		return a.list(ctx)
	}
	// The view may still hold a listing from before Docker went away.
	a.mu.Lock()
	err := a.dockerErr
	a.mu.Unlock()
	if err != nil {
		return listing{err: err}
	}
	return a.view.get(ctx, a.maxListingAge())
}

// list asks Docker for the running containers, unless its watch already
// knows Docker cannot answer.
func (a *Agent) list(ctx context.Context) listing {
	start := time.Now()
	a.mu.Lock()
	err := a.dockerErr
	a.mu.Unlock()
	var list []Container
	if err == nil {
		list, err = a.docker.Containers(ctx)
	}
	if err != nil {
		list = nil
	} else {
		a.enrich(ctx, list)
	}
	return listing{containers: list, err: err, at: start, took: time.Since(start)}
}

// maxListingAge is how old the view's listing may be before syncs refuse
// it. The lister lists at least every resync interval, and each call gives
// up after dockerTimeout; only a stuck lister reaches this.
func (a *Agent) maxListingAge() time.Duration {
	return 2*a.cfg.ResyncInterval + 2*dockerTimeout
}

// relist is the view's loop body: list, store, and sync if it matters.
func (a *Agent) relist(ctx context.Context) error {
	event := a.view.begin()
	l := a.list(ctx)
	if l.err == nil && a.metrics != nil {
		a.metrics.dockerList.Observe(l.took.Seconds())
	}
	if a.view.set(l.containers, l.err, l.at, l.took, event) {
		a.runner.Trigger()
		// The ECS agent's container may have changed.
		a.ecsRunner.Trigger()
	}
	return l.err
}

// dockerChanged is the Docker watch's callback: list again, then sync.
func (a *Agent) dockerChanged() {
	a.view.changed()
	a.lister.Trigger()
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

// recordRepairs logs every fixed problem once and counts it as a repair.
// Fixes before the first verified enforcement are the initial setup, not
// repairs of drift.
func (a *Agent) recordRepairs(states []firewall.FamilyState) {
	a.mu.Lock()
	ready := a.ready
	a.mu.Unlock()
	for _, st := range states {
		for _, u := range st.Updates {
			a.log.WithField("family", st.Family).Infof("applied a changed exemption or host-network set: %s", u)
		}
		for _, p := range st.Problems {
			fields := logrus.Fields{"family": p.Family, "reason": p.Reason}
			if !ready {
				a.log.WithFields(fields).Infof("initial setup: %s; %s", p.Detail, p.Reason.Fix())
				continue
			}
			if !st.Enforced {
				a.log.WithFields(fields).WithError(st.Err).Errorf("drift not repaired: %s", p.Detail)
				continue
			}
			a.log.WithFields(fields).Warnf("repaired drift: %s; %s", p.Detail, p.Reason.Fix())
			a.mu.Lock()
			a.repairs++
			a.mu.Unlock()
			if a.metrics != nil {
				a.metrics.repairs.WithLabelValues(string(p.Family), string(p.Reason)).Inc()
			}
		}
	}
}

// accumulate turns the chains' counters, which restart from zero whenever a
// chain is rebuilt, into totals since the agent started, so they only grow:
//   - a failed read counts nothing and forgets nothing (the next good read
//     continues from the last one, instead of counting everything again);
//   - a chain rebuilt in this pass counts from zero;
//   - the first sight of a chain is the baseline: what an earlier run
//     blocked is not counted again after a restart;
//   - counters that went down without our rebuild were zeroed by someone:
//     they count from zero.
//
// Packets blocked between the last read and a rebuild are lost: the totals
// may undercount, never double-count. Caller holds mu.
func (a *Agent) accumulate(fs firewall.FamilyState) [2]uint64 {
	tot := a.blocked[fs.Family]
	if fs.Rules == nil {
		return tot
	}
	for chain, cur := range fs.Counts {
		key := string(fs.Family) + "/" + chain
		last, seen := a.lastCounts[key]
		var delta [2]uint64
		switch {
		case slices.Contains(fs.RebuiltChains, chain):
			delta = cur
		case !seen:
		case cur[0] < last[0] || cur[1] < last[1]:
			delta = cur
		default:
			delta = [2]uint64{cur[0] - last[0], cur[1] - last[1]}
		}
		a.lastCounts[key] = cur
		tot[0] += delta[0]
		tot[1] += delta[1]
	}
	// A chain that is gone (deleted, or not read) starts from zero when it
	// is back; its rebuild says so.
	for key := range a.lastCounts {
		fam, chain, _ := strings.Cut(key, "/")
		if _, ok := fs.Counts[chain]; fam == string(fs.Family) && !ok {
			delete(a.lastCounts, key)
		}
	}
	a.blocked[fs.Family] = tot
	return tot
}

// ecs evaluates ECS_AWSVPC_BLOCK_IMDS as the ECS agent will see it, and as
// the running agent sees it now. The daemon takes the ECS loop's last read
// and reports a failed read as an issue (retrying the sync cannot fix a
// file); a one-shot command reads now, bounded the same way, and returns
// the error.
func (a *Agent) ecs(ctx context.Context, containers []Container, enforce bool) (ECSStatus, []string, error) {
	st := ECSStatus{Mode: a.cfg.ECSConfigMode}
	agentID := ecsAgentID(containers)
	var last, good ecsFiles
	var env envRead
	envOK := false
	if a.ecsView != nil {
		last, good = a.ecsView.get(ctx, a.maxECSAge())
		env, envOK = a.ecsView.agentEnv(agentID)
	} else {
		last = a.newECSReader(enforce && a.cfg.ECSConfigMode == ECSModeEnforce).get(ctx)
		if last.err == nil {
			good = last
		}
		if agentID != "" && last.err == nil {
			env.env, env.err = a.docker.Env(ctx, agentID)
			envOK = true
		}
	}
	st.Wrote, st.WriteFailed = last.wrote, last.writeFailed
	st.Present = agentID != ""
	if last.err != nil {
		// Claim nothing the failed read did not see; show what the last
		// good read saw, marked stale.
		st.Error = last.err.Error()
		if !good.at.IsZero() {
			res := good.res
			st.Config, st.Stale, st.ReadAt = &res, true, good.at
			st.Present = st.Present || good.in.InstanceConfig.Present || good.in.UserConfig.Present || good.in.JSONConfig.Present
		}
		issue := last.err.Error()
		if last.writeFailed {
			issue = "cannot write ECS_AWSVPC_BLOCK_IMDS=true: " + issue
		}
		if st.Stale {
			issue += fmt.Sprintf(" (last good read %s; ECS_AWSVPC_BLOCK_IMDS is not claimed)", good.at.Format(time.RFC3339))
		}
		if a.ecsView != nil {
			return st, []string{issue}, nil
		}
		return st, []string{issue}, last.err
	}
	in, res := last.in, last.res
	st.Config, st.ReadAt = &res, last.at
	st.AWSVPCBlockIMDS = res.AWSVPCBlockIMDS
	st.Present = st.Present || in.InstanceConfig.Present || in.UserConfig.Present || in.JSONConfig.Present

	var issues []string
	switch {
	case agentID == "" || !envOK:
		// No ECS agent, or its environment is still being read.
	case env.err != nil:
		issues = append(issues, "cannot read the running ECS agent's environment: "+env.err.Error())
	default:
		run, err := ecsconfig.EvaluateContainerEnv(env.env, in.JSONConfig)
		if err != nil {
			issues = append(issues, "cannot evaluate the running ECS agent's setting: "+err.Error())
			break
		}
		st.RunningAgent = &run
		st.RestartNeeded = res.AWSVPCBlockIMDS && !run.AWSVPCBlockIMDS
	}
	switch {
	case !st.Present:
	case st.RestartNeeded:
		issues = append(issues, "ECS_AWSVPC_BLOCK_IMDS is true in the config files but not in the running ECS agent: restart the ECS agent (systemctl restart ecs)")
	case !res.AWSVPCBlockIMDS:
		issues = append(issues, "ECS_AWSVPC_BLOCK_IMDS is not in effect ("+res.Reason+"): awsvpc tasks will reach IMDS")
	}
	return st, issues, nil
}

// sync is one daemon pass: enforce, publish, tell the supervisor.
func (a *Agent) sync(ctx context.Context) error {
	st, err := a.pass(ctx, true)
	a.mu.Lock()
	st.Repairs = a.repairs
	ok := st.Firewall.IPv4.Enforced && (!a.cfg.IPv6 || st.Firewall.IPv6.Enforced)
	firstReady := ok && !a.ready
	if ok {
		a.ready = true
	}
	if err == nil && st.LastSync.OK {
		a.lastSuccess = st.CheckedAt
	}
	st.LastSync.LastSuccess = a.lastSuccess
	if !a.ready {
		// Nothing before the first verified enforcement may claim protection.
		st.Verdict = VerdictExposed
		st.Reasons = append([]string{"the block has not been verified in place yet"}, st.Reasons...)
	}
	from := a.verdictSeen
	a.verdictSeen = st.Verdict
	a.mu.Unlock()
	// Encoded outside the lock that status requests take; syncs never
	// overlap, so nothing publishes in between.
	body := encodeStatus(&st)
	a.mu.Lock()
	a.status, a.statusJSON = st, body
	a.mu.Unlock()
	if a.metrics != nil {
		obsErr := err
		if obsErr == nil && !st.LastSync.OK {
			obsErr = errors.New(st.LastSync.Error)
		}
		a.metrics.observe(&st, obsErr)
	}
	a.logVerdict(from, st)
	if firstReady {
		a.log.WithField("verdict", st.Verdict).Info("IMDS block verified in place")
		if a.hooks.Ready != nil {
			a.hooks.Ready()
		}
	}
	if a.hooks.Alive != nil {
		a.hooks.Alive()
	}
	if err != nil {
		a.log.WithError(err).Warn("sync incomplete; retrying")
	}
	return err
}

// logVerdict writes one line when the verdict changes, so a log shipped off
// the host shows when it became degraded or exposed, and why.
func (a *Agent) logVerdict(from string, st Status) {
	if from == st.Verdict {
		return
	}
	if from == "" {
		from = "starting"
	}
	why := "all checks pass"
	if len(st.Reasons) > 0 {
		why = strings.Join(st.Reasons, "; ")
	}
	l := a.log.WithFields(logrus.Fields{"from": from, "to": st.Verdict, "why": why})
	if st.Verdict == VerdictProtected {
		l.Info("verdict changed")
		return
	}
	l.Warn("verdict changed")
}

// Status returns the last published status.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// Trigger asks the loop for a sync soon, and the ECS loop for a read: a
// resync asked for from outside covers the configuration too.
func (a *Agent) Trigger() {
	if a.ecsRunner != nil {
		a.ecsRunner.Trigger()
	}
	if a.runner != nil {
		a.runner.Trigger()
	}
}

// Redetect forgets the iptables backend, so the next sync detects it again
// (SIGHUP: the operator may have switched alternatives).
func (a *Agent) Redetect() {
	a.mu.Lock()
	a.fw = nil
	a.mu.Unlock()
	a.Trigger()
}

// minSyncInterval bounds how often a burst of triggers can run a sync. Our
// own changes notify us too; this keeps that echo to one extra cheap pass.
const minSyncInterval = 10 * time.Millisecond

// dockerSyncInterval bounds the syncs Docker events cause to ten a second.
const dockerSyncInterval = 100 * time.Millisecond

// stopGrace bounds how long Run waits, once ctx ends, for its loops to
// return: a sync stuck in an exec or a Docker call must not keep a stopping
// daemon alive (their contexts end with ctx; this is the backstop).
const stopGrace = 2500 * time.Millisecond

// Run is the daemon: it serves status and metrics and keeps the block in
// place until ctx ends. Stopping leaves every rule where it is: fail closed.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	statusEP, metricsEP := statusEndpoint, metricsEndpoint
	if a.cfg.MetricsAddr == "" {
		checkFDLimit(a.log, &statusEP)
	} else {
		checkFDLimit(a.log, &statusEP, &metricsEP)
	}
	a.metrics = newMetrics(a.version, a.cfg.Families())
	a.runner = newRunner(a.sync, minSyncInterval, a.cfg.ResyncInterval)
	a.ecsView = newECSView()
	a.ecsReader = a.newECSReader(a.cfg.ECSConfigMode == ECSModeEnforce)
	a.ecsRunner = newRunner(a.rereadECS, ecsMinInterval, a.cfg.ResyncInterval)
	if a.docker != nil {
		a.view = newContainerView()
		a.lister = newRunner(a.relist, minSyncInterval, a.cfg.ResyncInterval)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", a.serveStatusJSON)
	mux.HandleFunc("GET /healthz", a.serveHealthz)
	// Profiles for diagnosing a slow sync on a real host; the socket is
	// root's only, so this exposes nothing a root shell could not read.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	stopStatus, err := serveStatus(a.cfg.StatusSocket, statusEP, mux, a.log)
	if err != nil {
		return err
	}
	defer func() { _ = stopStatus() }()
	if a.cfg.MetricsAddr != "" {
		stopMetrics, err := a.metrics.serve(a.cfg.MetricsAddr, metricsEP, a.serveHealthz, a.log)
		if err != nil {
			return err
		}
		defer func() { _ = stopMetrics() }()
	}

	var wg sync.WaitGroup
	a.startECSWatch(ctx, &wg)
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.ecsRunner.Loop(ctx)
	}()
	if a.docker != nil {
		wg.Add(2)
		go func() {
			defer wg.Done()
			a.lister.Loop(ctx)
		}()
		go func() {
			defer wg.Done()
			// Container churn sends several events per container; each
			// would be a list and a sync. The firewall does not depend on
			// them, so they are throttled; nf_tables changes are not.
			a.docker.Watch(ctx, throttle(dockerSyncInterval, a.dockerChanged), a.setDockerErr)
		}()
	}
	a.startFirewalldWatch(ctx, &wg)
	if a.watchNFT != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.watchFirewall(ctx)
		}()
	}
	a.log.WithFields(logrus.Fields{"resync": a.cfg.ResyncInterval, "action": a.cfg.Action, "ipv6": a.cfg.IPv6}).Info("imdsguard running")
	a.mu.Lock()
	a.runCtx = ctx
	a.mu.Unlock()
	syncDone := make(chan struct{})
	go func() {
		defer close(syncDone)
		a.runner.Loop(ctx)
	}()
	<-ctx.Done()
	cancel()
	stopped := make(chan struct{})
	go func() {
		<-syncDone
		wg.Wait()
		a.wg.Wait() // route watchers
		// Release the layer-1 sockets (on a hang, the exit does).
		a.closeLayer1()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		a.log.Warnf("a loop did not return within %v of the stop (a hung exec or read); exiting anyway", stopGrace)
	}
	if a.hooks.Stopping != nil {
		a.hooks.Stopping()
	}
	a.log.Info("stopped; IMDS rules left in place")
	return nil
}

// watchFirewall follows nf_tables changes while the backend is nft. On
// legacy there are no notifications and the periodic resync is the poll.
func (a *Agent) watchFirewall(ctx context.Context) {
	for ctx.Err() == nil {
		a.mu.Lock()
		mode := a.backend.Mode
		a.mu.Unlock()
		if mode != "nft" {
			// Until the first sync has detected the backend, look again
			// soon: waiting a whole resync would leave nft drift unwatched.
			wait := a.cfg.ResyncInterval
			if mode == "" {
				wait = 20 * time.Millisecond
			}
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		err := a.watchNFT(ctx, a.runner.Trigger)
		if ctx.Err() != nil {
			return
		}
		a.log.WithError(err).Warn("nf_tables notifications lost; relying on the periodic resync until they are back")
		a.runner.Trigger()
		if !sleep(ctx, a.cfg.ResyncInterval) {
			return
		}
	}
}

func (a *Agent) setDockerErr(err error) {
	a.mu.Lock()
	changed := (err == nil) != (a.dockerErr == nil) || !a.dockerSeen
	a.dockerErr, a.dockerSeen = err, true
	a.mu.Unlock()
	if changed {
		if err != nil {
			a.log.WithError(err).Warn("Docker unreachable; the firewall is still enforced")
		} else {
			a.log.Info("connected to Docker")
		}
	}
}

func (a *Agent) serveStatusJSON(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	b := a.statusJSON
	if b == nil { // before the first sync
		b = encodeStatus(&a.status)
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// encodeStatus is the body of GET /status. Status holds only strings,
// numbers and times, so encoding cannot fail.
func encodeStatus(st *Status) []byte {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		b, _ = json.Marshal(map[string]string{"verdict": VerdictDegraded, "error": err.Error()})
	}
	return append(b, '\n')
}

// healthy is true only while the last sync succeeded recently: health means
// fresh verification, not a live process.
func (a *Agent) healthy() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	maxAge := max(3*a.cfg.ResyncInterval, 15*time.Second)
	switch {
	case a.lastSuccess.IsZero():
		return false, "no successful sync yet"
	case a.status.LastSync != nil && !a.status.LastSync.OK:
		return false, "last sync failed: " + a.status.LastSync.Error
	case time.Since(a.lastSuccess) > maxAge:
		return false, fmt.Sprintf("last successful sync %s ago", time.Since(a.lastSuccess).Round(time.Second))
	}
	return true, "ok"
}

func (a *Agent) serveHealthz(w http.ResponseWriter, r *http.Request) {
	ok, why := a.healthy()
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, why)
}
