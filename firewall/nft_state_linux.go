//go:build linux

package firewall

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
)

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
