// Package agent is imdsguard's reconcile loop: triggers and coalescing
// runners, and one pass — snapshot, desired state, apply, verify, publish.
// A pass reads first (the snapshot, the host-network cgroups: hostread.go),
// then computes the desired state with a pure function (desired in
// desired.go: the firewall spec, exemptions, host-network plan), applies
// and verifies it, and judges the result with another (judge: each
// container's status and the verdict). Events and timers only trigger a
// sync, and no event is ever trusted to carry state. It must not call Docker in a sync (the
// docker package's lister takes the snapshot in its own loop), and it
// speaks neither iptables (firewall/), netlink (tasknet/) nor HTTP
// (status/).
package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
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
	source  docker.Source // nil: the container picture is unknown
	lister  *docker.Lister
	hooks   Hooks
	version string
	pub     *status.Publisher
	runner  *runner
	// view and listRunner exist in the daemon only: one-shot commands take
	// a snapshot of their own.
	view       *docker.View
	listRunner *runner
	watchNFT   func(ctx context.Context, changed func()) error
	// watchFirewalld follows firewalld's reloads (firewalld.go).
	watchFirewalld func(ctx context.Context, changed func()) error
	// The ECS configuration's own loop (ecsloop.go), daemon only:
	// one-shot commands read the files themselves, with the same deadline.
	ecsView   *ecsView
	ecsReader *boundedReader
	ecsRunner *runner
	ecsWatch  *ecsWatch
	ecsErrMsg string // the last read's error, to log each change once
	// ipv6NA says why IPv6 is not applicable on this kernel ("" when it is).
	ipv6NA string

	mu         sync.Mutex
	fw         Firewall
	backend    firewall.Backend
	dockerErr  error
	dockerSeen bool
	repairs    uint64
	repairsBy  map[string]map[string]uint64  // by family, reason
	blocked    map[firewall.Family][2]uint64 // accumulated since start
	lastCounts map[string][2]uint64          // last counters seen, by "family/chain"
	ready      bool
	lastOK     time.Time

	namespaces Namespaces
	sys        System
	// granted are the exemptions in force after the last enforcing pass,
	// by short ID, so granting and withdrawing is logged once.
	granted map[string]status.Exemption
	// verdictSeen is the verdict last published, for transition logs.
	verdictSeen string
	// routesSeen marks awsvpc tasks (by pause ID) verified protected, so a
	// route that goes missing later is counted as drift.
	routesSeen map[string]bool
	watches    map[string]nsWatch
	watchSeq   uint64
	// verified is each task's last full route read (routewatch.go).
	verified map[string]verifiedRead
	now      func() time.Time
	runCtx   context.Context
	wg       sync.WaitGroup
	// l1 is imdsguard's own nftables tables (layer1.go), tasks1 the same
	// in awsvpc task namespaces (layer1_task.go); nil: off.
	l1     *layer1
	tasks1 *taskLayers
	// att reads and attributes blocked attempts (attempts.go), daemon only.
	att *attemptsWiring

	// hostCgroups are the host-network containers' cgroups the last sync
	// blocked, by container ID: kept while a read fails (fail closed).
	hostCgroups map[string]hostCgroup
	// hostChainGone is the firewall with which, blocking off, the host
	// chain was seen gone (after Redetect a new one looks again).
	hostChainGone Firewall
}

// Options are the agent's collaborators.
type Options struct {
	Config Config
	Log    *logrus.Entry
	// Firewall builds layer 2; nil is the host's iptables (RealFirewall).
	Firewall FirewallFactory
	// Docker may be nil: the container picture is then reported unknown.
	Docker  docker.Source
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
	// Ports finds exempt containers' bridge ports; nil: none are found.
	Ports docker.PortFinder
	// NFTables opens layer 1, imdsguard's own nftables tables; nil: off.
	NFTables NFTFactory
	// TaskNFT opens layer 1 in a task's namespace; nil: not in tasks.
	TaskNFT TaskNFTOpener
	// IPv6 probes whether the kernel has IPv6 ("" yes, else why not);
	// nil is the machine's.
	IPv6 func() string
}

// New builds an agent. Nothing touches the system until Once or Run.
func New(o Options) *Agent {
	a := &Agent{
		cfg: o.Config, log: o.Log, newFW: o.Firewall, source: o.Docker, hooks: o.Hooks,
		version: o.Version, watchNFT: o.WatchNFTables,
		blocked: map[firewall.Family][2]uint64{}, lastCounts: map[string][2]uint64{}, repairsBy: map[string]map[string]uint64{},
		namespaces: o.Namespaces, sys: o.System, routesSeen: map[string]bool{}, watches: map[string]nsWatch{},
		verified: map[string]verifiedRead{}, now: time.Now,
	}
	a.watchFirewalld = o.WatchFirewalld
	probe := o.IPv6
	if probe == nil {
		probe = kernelIPv6
	}
	if a.cfg.IPv6 {
		if why := probe(); why != "" {
			// Nothing to block and nothing to reach IMDS with: the family
			// is reported not applicable, and readiness does not wait for it.
			a.ipv6NA, a.cfg.IPv6 = why, false
			a.log.WithField("why", why).Warn("IPv6 is not available on this kernel; the IPv6 block is not applicable")
		}
	}
	if a.newFW == nil {
		a.newFW = RealFirewall(a.cfg)
	}
	if a.source != nil {
		a.lister = &docker.Lister{Source: a.source, Ports: o.Ports, Exemptable: func(c docker.Container) bool { return exemptCandidate(a.cfg, c) }}
	}
	if a.sys == nil {
		a.sys = realSystem{}
	}
	if o.NFTables != nil {
		a.l1 = &layer1{open: o.NFTables, dockerNFT: firewall.DockerNFTables}
		a.tasks1 = &taskLayers{open: o.TaskNFT, m: map[string]*firewall.NFTLayer{}}
	}
	initial := status.Status{
		Verdict: status.VerdictDegraded, Reasons: []string{"starting: no sync has completed yet"},
		Source: "daemon", Version: o.Version, Firewall: status.FirewallStatus{Action: string(o.Config.Action)},
	}
	var fams, reasons []string
	for _, f := range a.cfg.Families() {
		fams = append(fams, string(f))
	}
	for _, r := range firewall.Reasons {
		reasons = append(reasons, string(r))
	}
	a.pub = status.NewPublisher(initial, o.Version, fams, append(reasons, ReasonAWSVPCRoute))
	return a
}

// Once runs a single pass over a snapshot of its own. With enforce it
// repairs the firewall (and, in enforce mode, ecs.config); without, it
// only reads. It returns the status and an error when something could not
// be checked at all.
func (a *Agent) Once(ctx context.Context, enforce bool) (*status.Status, error) {
	st, err := a.pass(ctx, a.take(ctx), enforce)
	st.Source = "check"
	if enforce {
		st.Source = "apply"
	}
	return &st, err
}

// Status returns the last published status.
func (a *Agent) Status() status.Status { return a.pub.Status() }

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
