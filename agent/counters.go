package agent

import (
	"maps"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

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
			a.countRepair(string(p.Family), string(p.Reason))
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

// countRepair counts one repair of drift, for status and the metrics.
func (a *Agent) countRepair(family, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.repairs++
	if a.repairsBy[family] == nil {
		a.repairsBy[family] = map[string]uint64{}
	}
	a.repairsBy[family][reason]++
}

// repairCounts copies repairsBy for a status. Caller holds mu.
func (a *Agent) repairCounts() map[string]map[string]uint64 {
	out := make(map[string]map[string]uint64, len(a.repairsBy))
	for f, m := range a.repairsBy {
		out[f] = maps.Clone(m)
	}
	return out
}

// familyStatus converts a firewall state.
func familyStatus(st firewall.FamilyState) status.FamilyStatus {
	fs := status.FamilyStatus{Enabled: true, Enforced: st.Enforced, BlockedPackets: st.Packets, BlockedBytes: st.Bytes}
	if st.Rules != nil {
		fs.Probe = st.Probe.String()
	}
	for _, p := range st.Problems {
		fs.Problems = append(fs.Problems, p.Detail)
	}
	if st.Err != nil {
		fs.Error = st.Err.Error()
	}
	return fs
}
