//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/google/nftables"
)

// nftLive is one table as the kernel reports it.
type nftLive struct {
	flags  uint32
	owner  uint32 // netlink port id of the owner; 0 when unowned
	chains map[string]nftLiveChain
}

type nftLiveChain struct {
	hook, prio int64 // -1 hook: a regular chain
	typ        string
	policy     int64 // -1: none
	rules      []nftLiveRule
}

type nftLiveRule struct {
	key            string
	packets, bytes uint64
}

// nftKernel is what layer 1 needs of nf_tables in one network namespace,
// over one socket that lives as long as the layer: the socket owns what it
// creates. nftConn is the real one; FakeNFT the unit tests' stand-in.
type nftKernel interface {
	// Port is the socket's netlink port id, the owner of what it creates.
	Port() uint32
	// Flags finds which table flags the kernel accepts.
	Flags() (NFTFlags, error)
	// Read returns the table, or nil when there is none.
	Read(fam nftables.TableFamily) (*nftLive, error)
	// Replace, in one transaction, deletes the tables in drop (taking
	// ownership first of those in takeover), then creates each of tables
	// with the flags.
	Replace(tables []nftTableSpec, drop, takeover []nftables.TableFamily, flags uint32) error
	// Delete deletes the tables in one transaction.
	Delete(drop, takeover []nftables.TableFamily, flags uint32) error
	Close() error
}

// NFTLayer keeps layer 1 in one network namespace: the host, or one awsvpc
// task. It holds the socket that owns the tables for as long as it lives;
// Close releases them (with persist they stay, orphaned, until the next
// agent takes them over; without, the kernel deletes them and layer 2 is
// what still blocks).
type NFTLayer struct {
	mu      sync.Mutex
	k       nftKernel
	flags   NFTFlags
	spec    NFTSpec
	resolve cgroupID
}

// newNFTLayer probes the flags once: they do not change while the kernel
// runs.
func newNFTLayer(k nftKernel, spec NFTSpec, resolve cgroupID) (*NFTLayer, error) {
	flags, err := k.Flags()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("probing nf_tables table flags: %w", err), k.Close())
	}
	return &NFTLayer{k: k, flags: flags, spec: spec, resolve: resolve}, nil
}

// Flags returns the table flags in use.
func (l *NFTLayer) Flags() NFTFlags { return l.flags }

// Port is the netlink port id that owns the tables this layer makes.
func (l *NFTLayer) Port() uint32 { return l.k.Port() }

func (l *NFTLayer) wantFlags() uint32 {
	var f uint32
	if l.flags.Owner {
		f |= tableFlagOwn
	}
	if l.flags.Persist {
		f |= tableFlagPer
	}
	return f
}

// SetSpec replaces the desired state; the next Ensure applies it.
func (l *NFTLayer) SetSpec(s NFTSpec) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spec = s
}

// Spec returns the desired state.
func (l *NFTLayer) Spec() NFTSpec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.spec
}

// nftObserved is one read of every table the spec names.
type nftObserved struct {
	want    []nftTableSpec
	skipped []string
	live    map[nftables.TableFamily]*nftLive
}

func (l *NFTLayer) observe() (nftObserved, error) {
	want, skipped := l.spec.render(l.resolve)
	o := nftObserved{want: want, skipped: skipped, live: map[nftables.TableFamily]*nftLive{}}
	var errs []error
	for _, t := range want {
		lt, err := l.k.Read(t.family)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading table %s: %w", t, err))
			continue
		}
		o.live[t.family] = lt
	}
	return o, errors.Join(errs...)
}

// state compares one observation with the spec. Content decides Present;
// ownership is reported beside it, because a table nobody owns still drops
// packets but the next `nft flush ruleset` may delete it.
func (l *NFTLayer) state(o nftObserved) NFTState {
	st := NFTState{Flags: l.flags, Skipped: o.skipped, Present: true, Owned: true}
	st.SurvivesFlush, st.SurvivesStop = l.flags.Guarantees()
	want := l.wantFlags()
	for _, t := range o.want {
		lt := o.live[t.family]
		if lt == nil {
			st.Present, st.Owned = false, false
			st.Problems = append(st.Problems, nftProblem(ReasonNFTTableMissing, "table %s is missing", t))
			continue
		}
		st.OwnerPort = lt.owner
		switch {
		case l.flags.Owner && lt.flags&tableFlagOwn != 0 && lt.owner != l.k.Port():
			st.Owned = false
			st.Problems = append(st.Problems, nftProblem(ReasonNFTOwnedByOther, "table %s is owned by another netlink socket (port id %d): another imdsguard?", t, lt.owner))
		case lt.flags&(tableFlagOwn|tableFlagPer) != want:
			st.Owned = false
			st.Problems = append(st.Problems, nftProblem(ReasonNFTNotOwned, "table %s has flags %#x, want %#x", t, lt.flags, want))
		}
		if d := diffTable(t, lt); d != "" {
			st.Present = false
			st.Problems = append(st.Problems, nftProblem(ReasonNFTTableModified, "table %s: %s", t, d))
			continue
		}
		for _, c := range t.chains {
			for i, r := range c.rules {
				if r.blocks {
					lr := lt.chains[c.name].rules[i]
					st.Packets += lr.packets
					st.Bytes += lr.bytes
				}
			}
		}
	}
	if !l.flags.Owner {
		st.Owned = false
	}
	return st
}

// sameHook: the live chain is the base chain c asks for (hook, priority,
// filter type, accept policy).
func sameHook(c nftChainSpec, lc nftLiveChain) bool {
	return lc.hook == int64(c.hook) && lc.prio == int64(c.prio) && lc.typ == string(nftables.ChainTypeFilter) && lc.policy == int64(nftables.ChainPolicyAccept)
}

// diffTable says how a live table differs from the spec, or "".
func diffTable(t nftTableSpec, lt *nftLive) string {
	if len(lt.chains) != len(t.chains) {
		return fmt.Sprintf("%d chains, want %d", len(lt.chains), len(t.chains))
	}
	for _, c := range t.chains {
		lc, ok := lt.chains[c.name]
		if !ok {
			return "chain " + c.name + " is missing"
		}
		if !sameHook(c, lc) {
			return fmt.Sprintf("chain %s is hooked at %d priority %d type %q policy %d, want %d priority %d filter accept", c.name, lc.hook, lc.prio, lc.typ, lc.policy, c.hook, c.prio)
		}
		if len(lc.rules) != len(c.rules) {
			return fmt.Sprintf("chain %s holds %d rules, want %d", c.name, len(lc.rules), len(c.rules))
		}
		for i, r := range c.rules {
			key, _, _, err := ruleKey(t.family, r.exprs)
			if err != nil || lc.rules[i].key != key {
				return fmt.Sprintf("chain %s rule %d is not %q", c.name, i+1, r.text)
			}
		}
	}
	return ""
}

// Name is the layer's name in status: "nftables".
func (l *NFTLayer) Name() string { return "nftables" }

// SetIntent renders the intent in the layer's scope.
func (l *NFTLayer) SetIntent(in Intent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spec = NFTSpec{Scope: l.spec.Scope, Action: in.Action, IPv6: in.IPv6, Exempt: in.Exempt, HostCgroups: in.HostCgroups}
}

// Check is CheckNFT as a Layer.
func (l *NFTLayer) Check(ctx context.Context) (LayerState, error) {
	st, err := l.CheckNFT(ctx)
	return nftLayerState(st), err
}

// Ensure is EnsureNFT as a Layer.
func (l *NFTLayer) Ensure(ctx context.Context) (LayerState, error) {
	st, err := l.EnsureNFT(ctx)
	return nftLayerState(st), err
}

// CheckNFT reads the tables and reports what is wrong, changing nothing.
func (l *NFTLayer) CheckNFT(ctx context.Context) (NFTState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o, err := l.observe()
	if err != nil {
		return NFTState{Flags: l.flags}, err
	}
	st := l.state(o)
	if !st.Present {
		st = l.daemonState(o, st)
	}
	return st, nil
}

// daemonState judges tables a running imdsguard owns by what they block,
// for a one-shot check that does not know the daemon's settings (its
// action, exemptions, host-network cgroups). While another live socket owns
// the tables nobody else can have written them, so they hold when every
// chain ends in the blocking rules imdsguard renders for either action and
// the forward chain holds nothing else; the rules ahead of that tail in the
// bridge chain are the daemon's exemptions and in the output chain its
// host-network drops, as layer 2's evaluator reads an ACCEPT in IMDS-GUARD.
// Tables that are not owned that way keep the exact comparison.
func (l *NFTLayer) daemonState(o nftObserved, exact NFTState) NFTState {
	for _, a := range []Action{ActionDrop, ActionReject} {
		spec := l.spec
		spec.Action, spec.Exempt, spec.HostCgroups = a, nil, nil
		want, _ := spec.render(l.resolve)
		st := exact
		st.Present, st.Packets, st.Bytes, st.Problems = true, 0, 0, nil
		for _, p := range exact.Problems {
			if p.Reason != ReasonNFTTableModified {
				st.Problems = append(st.Problems, p)
			}
		}
		for _, t := range want {
			lt := o.live[t.family]
			if lt == nil || lt.flags&tableFlagOwn == 0 || lt.owner == 0 || lt.owner == l.k.Port() {
				st.Present = false
				break
			}
			pkts, bytes, ok := tailMatch(t, lt)
			if !ok {
				st.Present = false
				break
			}
			st.Packets += pkts
			st.Bytes += bytes
		}
		if st.Present {
			return st
		}
	}
	return exact
}

// tailMatch reports whether each chain of lt ends in t's rules (the
// forward chain holding nothing else), and what their blocking rules
// counted.
func tailMatch(t nftTableSpec, lt *nftLive) (pkts, bytes uint64, ok bool) {
	if len(lt.chains) != len(t.chains) {
		return 0, 0, false
	}
	for _, c := range t.chains {
		lc, found := lt.chains[c.name]
		if !found || !sameHook(c, lc) {
			return 0, 0, false
		}
		extra := len(lc.rules) - len(c.rules)
		if extra < 0 || (extra > 0 && c.name == nftForward) {
			return 0, 0, false
		}
		for i, r := range c.rules {
			key, _, _, err := ruleKey(t.family, r.exprs)
			lr := lc.rules[extra+i]
			if err != nil || lr.key != key {
				return 0, 0, false
			}
			if r.blocks {
				pkts += lr.packets
				bytes += lr.bytes
			}
		}
	}
	return pkts, bytes, true
}

// EnsureNFT rebuilds the tables when anything differs, in one transaction
// (old tables out, new ones in: no moment without the block), and verifies
// the result with a fresh read.
func (l *NFTLayer) EnsureNFT(ctx context.Context) (NFTState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return NFTState{Flags: l.flags}, err
	}
	o, err := l.observe()
	if err != nil {
		return NFTState{Flags: l.flags}, err
	}
	st := l.state(o)
	if len(st.Problems) == 0 {
		return st, nil
	}
	found := st.Problems
	drop, takeover := l.existing(o)
	var errs []error
	if err := l.k.Replace(o.want, drop, takeover, l.wantFlags()); err != nil {
		errs = append(errs, fmt.Errorf("rebuilding the %s tables: %w", NFTTable, err))
	}
	o, err = l.observe()
	if err != nil {
		return NFTState{Flags: l.flags, Problems: found}, errors.Join(append(errs, fmt.Errorf("verifying: %w", err))...)
	}
	st = l.state(o)
	left := st.Problems
	st.Problems, st.Rebuilt = found, len(errs) == 0
	for _, p := range left {
		errs = append(errs, fmt.Errorf("still wrong after repair: %s", p.Detail))
	}
	return st, errors.Join(errs...)
}

// existing lists the tables present, and those of them nobody owns but
// persist keeps (orphans: taken over before they are replaced).
func (l *NFTLayer) existing(o nftObserved) (drop, takeover []nftables.TableFamily) {
	for fam, lt := range o.live {
		if lt == nil {
			continue
		}
		drop = append(drop, fam)
		if l.flags.Owner && lt.flags&(tableFlagOwn|tableFlagPer) == tableFlagPer {
			takeover = append(takeover, fam)
		}
	}
	slices.Sort(drop)
	slices.Sort(takeover)
	return drop, takeover
}

// Remove deletes both tables (whichever exist), taking orphans over first.
// A table another live socket owns cannot be deleted: that agent must stop
// first.
func (l *NFTLayer) Remove(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	o := nftObserved{live: map[nftables.TableFamily]*nftLive{}}
	var errs []error
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge} {
		lt, err := l.k.Read(fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading table %s %s: %w", familyName(fam), NFTTable, err))
			continue
		}
		if lt != nil && lt.flags&tableFlagOwn != 0 && lt.owner != l.k.Port() {
			errs = append(errs, fmt.Errorf("table %s %s is owned by a running process (netlink port id %d): stop it first", familyName(fam), NFTTable, lt.owner))
			continue
		}
		o.live[fam] = lt
	}
	if drop, takeover := l.existing(o); len(drop) > 0 {
		if err := l.k.Delete(drop, takeover, l.wantFlags()); err != nil {
			errs = append(errs, fmt.Errorf("deleting the %s tables: %w", NFTTable, err))
		}
	}
	return errors.Join(errs...)
}

// Close releases the socket, and with it ownership of the tables.
func (l *NFTLayer) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.k.Close()
}

var (
	_ Layer = (*NFTLayer)(nil)
	_ Layer = IPTablesLayer{}
)

// RemoveNFT deletes layer 1 in the namespace netnsFd refers to (0: the
// caller's), for `imdsguard remove`: orphans are taken over and deleted; a
// table a live agent owns is refused.
func RemoveNFT(ctx context.Context, netnsFd int) error {
	l, err := OpenNFT(netnsFd, NFTSpec{})
	if err != nil {
		return err
	}
	return errors.Join(l.Remove(ctx), l.Close())
}
