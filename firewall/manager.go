package firewall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Tables is what the manager needs of one family's iptables: go-iptables to
// delete a chain, plus iptables-save and iptables-restore. It is narrow so a
// stateful fake can stand in for the kernel in unit tests.
type Tables interface {
	ClearAndDeleteChain(table, chain string) error
	// Save returns `iptables-save -c -t table` (every table for ""): one
	// consistent snapshot of every chain with counters, in one process.
	Save(table string) ([]byte, error)
	// Restore feeds payload to iptables-restore --noflush: one atomic
	// transaction, which is also how jumps are inserted and deleted (by
	// their full spec, never by a rule number read earlier).
	Restore(payload []byte) error
}

// FamilyState is the verified state of one family after Check or Ensure.
type FamilyState struct {
	Family Family `json:"family"`
	// Enforced is true only when a read of the live ruleset, after any fix,
	// found nothing wrong.
	Enforced bool `json:"enforced"`
	// Problems are what was wrong: left alone by Check, fixed by Ensure.
	Problems []Problem `json:"problems,omitempty"`
	// Packets and Bytes are the IMDS-GUARD counters: traffic blocked since
	// the chain was last rebuilt.
	Packets uint64 `json:"blocked_packets"`
	Bytes   uint64 `json:"blocked_bytes"`
	// Updates are changes of the desired state applied by Ensure — an
	// exemption or a host-network cgroup came or went — as opposed to drift,
	// which is in Problems.
	Updates []string `json:"updates,omitempty"`
	// Probe is what the kernel does with the first packet to IMDS from a
	// bridged container no rule names: Enforced requires it dropped.
	Probe LayerResult `json:"probe"`
	// Rules is the ruleset that was read, to judge each container's packet.
	Rules *Ruleset `json:"-"`
	// Counts are Packets and Bytes per owned chain: each chain's counters
	// restart on its own rebuild.
	Counts map[string][2]uint64 `json:"-"`
	// Rebuilt is set when Ensure replaced a chain, which zeroes its
	// counters; RebuiltChains says which.
	Rebuilt       bool     `json:"-"`
	RebuiltChains []string `json:"-"`
	Err           error    `json:"-"`
}

// Manager checks and enforces the IMDS block in every configured family.
type Manager struct {
	spec     Spec
	families []Family
	tables   map[Family]Tables
	// verified are the chain bodies the last Ensure verified in place, per
	// family: a live chain still equal to them differs from a new spec
	// because the spec changed, not because someone edited it.
	verified map[Family]bodies
	// bridgeNF reads the bridge netfilter sysctl; tests replace it.
	bridgeNF func(Family) Tri
	// mu serializes our own changes: the daemon and a concurrent check share
	// nothing else, and interleaved fixes could double-insert a jump.
	mu sync.Mutex
}

type bodies struct{ guard, host []string }

// NewManager builds a manager over one Tables per family, in the given order.
func NewManager(spec Spec, tables map[Family]Tables, families ...Family) *Manager {
	return &Manager{spec: spec, families: families, tables: tables, verified: map[Family]bodies{}, bridgeNF: ReadBridgeNF}
}

// SetBridgeNF replaces the reader of the bridge netfilter sysctl (tests, or
// a host whose setting is known otherwise).
func (m *Manager) SetBridgeNF(read func(Family) Tri) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bridgeNF = read
}

// Families returns the families the manager enforces.
func (m *Manager) Families() []Family { return slices.Clone(m.families) }

// Spec returns the desired state.
func (m *Manager) Spec() Spec {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.spec
}

// SetSpec replaces the desired state; the next Ensure applies it. The agent
// calls it in every sync with the exemptions and cgroups of that moment.
func (m *Manager) SetSpec(s Spec) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.spec = s
}

// splitUpdates takes out of ps the chain differences that only a changed
// spec explains (the live body is still what the last Ensure verified), and
// describes them as updates.
func (m *Manager) splitUpdates(f Family, o observed, ps []Problem) ([]Problem, []string) {
	last, ok := m.verified[f]
	if !ok {
		return ps, nil
	}
	var updates []string
	keep := ps[:0:0]
	for _, p := range ps {
		switch {
		case p.Reason == ReasonChainModified && slices.Equal(o.guard, last.guard):
			updates = append(updates, fmt.Sprintf("%s: %s %q -> %q", f, Chain, o.guard, m.spec.Rules(f)))
		case p.Reason == ReasonHostChainModified && slices.Equal(o.host, last.host):
			updates = append(updates, fmt.Sprintf("%s: %s %q -> %q", f, HostChain, o.host, m.spec.HostRules(f)))
		default:
			keep = append(keep, p)
		}
	}
	return keep, updates
}

// observe reads one family's filter table. One iptables-save instead of
// three `iptables -S CHAIN` calls: a consistent snapshot at a third of the
// cost, and iptables-nft 1.8.9 answers -S on a missing chain with
// "incompatible" rather than "No chain", which reads as a real error.
// Every table is read, because raw and mangle see a forwarded packet before
// filter does.
func observe(t Tables) (observed, error) {
	out, err := t.Save("")
	if err != nil {
		return observed{}, fmt.Errorf("reading the ruleset: %w", err)
	}
	return parseSave(out), nil
}

// read observes family f and parses what it read for the evaluator. A
// ruleset the evaluator cannot parse fails the read: nothing unread is
// judged blocked.
func (m *Manager) read(f Family) (observed, error) {
	out, err := m.tables[f].Save("")
	if err != nil {
		return observed{}, fmt.Errorf("reading the ruleset: %w", err)
	}
	o := parseSave(out)
	if o.rules, err = ParseRuleset(f, out); err != nil {
		return o, fmt.Errorf("parsing the ruleset: %w", err)
	}
	o.rules.BridgeNF = m.bridgeNF(f)
	return o, nil
}

// Probe is the first packet to IMDS from a bridged container that no rule
// names: a container the agent has not seen yet.
func Probe(f Family) Packet { return Packet{Family: f, Anonymous: true} }

// judge fills in what the kernel does with the probe.
func (st *FamilyState) judge(o observed) {
	st.Rules = o.rules
	st.Probe = o.rules.Evaluate(Probe(st.Family))
	st.Packets, st.Bytes = o.packets, o.bytes
	st.Counts = o.counts
}

// Check reads every family and reports what is wrong, changing nothing.
func (m *Manager) Check(ctx context.Context) ([]FamilyState, error) {
	m.mu.Lock()
	spec := m.spec
	m.mu.Unlock()
	var errs []error
	states := make([]FamilyState, 0, len(m.families))
	for _, f := range m.families {
		st := FamilyState{Family: f}
		o, err := m.read(f)
		if err != nil {
			st.Err = fmt.Errorf("%s: %w", f, err)
			errs = append(errs, st.Err)
		} else {
			// The verdict is the kernel's: a chain written with other
			// settings (another --action, exemptions) blocks just as well,
			// so only when the probe passes are the differences worth
			// reporting, and then the chain body is not compared with
			// this command's own settings.
			st.judge(o)
			st.Enforced = st.Probe.Dropped
			if !st.Enforced {
				st.Problems = append(st.Problems, Problem{Family: f, Reason: ReasonNotDropped,
					Detail: "a new container's first packet to IMDS is not dropped: " + st.Probe.String()})
				for _, p := range o.problems(f, spec) {
					if p.Reason != ReasonChainModified && p.Reason != ReasonHostChainModified {
						st.Problems = append(st.Problems, p)
					}
				}
			}
		}
		states = append(states, st)
	}
	return states, errors.Join(errs...)
}

// Ensure brings every family to the desired state and verifies it. Families
// are independent: a failure in one does not stop the other. Nothing here
// removes a block: the chain body is replaced atomically, and jumps are only
// inserted before stale copies are deleted.
func (m *Manager) Ensure(ctx context.Context) ([]FamilyState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	states := make([]FamilyState, 0, len(m.families))
	for _, f := range m.families {
		if err := ctx.Err(); err != nil {
			return states, err
		}
		st, err := m.ensureFamily(f)
		if err != nil {
			st.Err = fmt.Errorf("%s: %w", f, err)
			errs = append(errs, st.Err)
		}
		states = append(states, st)
	}
	return states, errors.Join(errs...)
}

func (m *Manager) ensureFamily(f Family) (FamilyState, error) {
	st := FamilyState{Family: f}
	t := m.tables[f]
	o, err := m.read(f)
	if err != nil {
		return st, err
	}
	st.Problems, st.Updates = m.splitUpdates(f, o, o.problems(f, m.spec))
	if len(st.Problems) == 0 && len(st.Updates) == 0 {
		st.judge(o)
		st.Enforced = st.Probe.Dropped
		if !st.Enforced {
			return st, fmt.Errorf("the rules are as written but a new container's packet to IMDS is not dropped: %s", st.Probe)
		}
		m.verified[f] = bodies{guard: o.guard, host: o.host}
		return st, nil
	}

	reasons := make(map[Reason]bool, len(st.Problems))
	for _, p := range st.Problems {
		reasons[p.Reason] = true
	}
	if len(st.Updates) > 0 {
		// Both bodies are cheap to render and compare; rebuild whichever
		// differs.
		reasons[ReasonChainModified] = !slices.Equal(o.guard, m.spec.Rules(f))
		reasons[ReasonHostChainModified] = m.spec.Host != nil && !slices.Equal(o.host, m.spec.HostRules(f))
	}
	// Another writer can change the table between our read and our write:
	// firewalld and Docker re-creating their chains, Docker re-inserting its
	// FORWARD jump, a second imdsguard without the lock. A transaction that
	// fails on that is all or nothing, so re-read and repair what the
	// fresh read shows, a bounded number of times. A fix that failed and
	// was then made good is not an error: only what is still wrong is
	// reported, with the last round's failures.
	var errs []error
	var left []Problem
	for round := 0; ; round++ {
		errs = m.repair(t, f, o, reasons, &st)
		if o, err = m.read(f); err != nil {
			return st, errors.Join(append(errs, fmt.Errorf("verifying: %w", err))...)
		}
		left = o.problems(f, m.spec)
		if len(left) == 0 || round == maxRepairRounds {
			break
		}
		reasons = make(map[Reason]bool, len(left))
		for _, p := range left {
			reasons[p.Reason] = true
		}
	}
	if len(left) == 0 {
		errs = nil
	}
	st.judge(o)
	st.Enforced = len(left) == 0 && st.Probe.Dropped
	if len(left) == 0 && !st.Probe.Dropped {
		errs = append(errs, fmt.Errorf("a new container's packet to IMDS is still not dropped: %s", st.Probe))
	}
	if st.Enforced {
		m.verified[f] = bodies{guard: o.guard, host: o.host}
	}
	for _, p := range left {
		errs = append(errs, fmt.Errorf("still wrong after repair: %s", p.Detail))
	}
	return st, errors.Join(errs...)
}

// Remove deletes what imdsguard owns — every FORWARD and DOCKER-USER jump to
// IMDS-GUARD, every OUTPUT jump to IMDS-GUARD-HOST, and the two chains — and
// nothing else: DOCKER-USER and FORWARD's jump to it belong to Docker, also
// one an earlier imdsguard inserted (the two cannot be told apart).
func (m *Manager) Remove(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, f := range m.families {
		t := m.tables[f]
		o, err := observe(t)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			continue
		}
		for _, j := range []struct {
			rules    []string
			from, to string
		}{{o.forward, Forward, Chain}, {o.dockerUser, DockerUser, Chain}, {o.output, Output, HostChain}} {
			n := len(indices(j.rules, jumpRule(j.from, j.to)))
			if n == 0 {
				continue
			}
			if err := t.Restore(jumpPayload(j.from, j.to, n, false)); err != nil {
				errs = append(errs, fmt.Errorf("%s: deleting the %s jumps to %s: %w", f, j.from, j.to, err))
			}
		}
		for _, c := range []struct {
			name   string
			exists bool
		}{{Chain, o.guardExists}, {HostChain, o.hostExists}} {
			if !c.exists {
				continue
			}
			if err := t.ClearAndDeleteChain(Table, c.name); err != nil {
				errs = append(errs, fmt.Errorf("%s: deleting %s: %w", f, c.name, err))
			}
		}
		delete(m.verified, f)
	}
	return errors.Join(errs...)
}
