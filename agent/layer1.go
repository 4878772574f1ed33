package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
)

// Layer 1 in the loop: imdsguard's own nftables tables on the host, beside
// layer 2 (IMDS-GUARD in DOCKER-USER). Each sync applies and verifies both;
// either one whole is enough to block every bridged container, so the
// verdict is exposed only when neither holds, and degraded when one that
// should exist is missing.

// NFTFactory opens layer 1 in the host's namespace. It keeps the socket
// that owns the tables until the layer is closed.
// ipv6 says whether the tables hold the IPv6 rules (not on a kernel
// without IPv6).
type NFTFactory func(ipv6 bool) (*firewall.NFTLayer, error)

// layer1 is the agent's layer-1 state.
type layer1 struct {
	open NFTFactory
	// dockerNFT detects Docker's nftables backend; nil: not asked.
	dockerNFT func() (bool, error)
	mu        sync.Mutex
	l         *firewall.NFTLayer
	// counters accumulated across rebuilds, like layer 2's.
	last, total [2]uint64
}

// nftIntent is the host's intent for layer 1: layer 2's spec, whose
// exemptions carry the bridge ports the lister found (a record without one
// stays blocked in both layers).
func nftIntent(cfg Config, spec firewall.Spec) firewall.Intent {
	in := firewall.Intent{Action: spec.Action, IPv6: cfg.IPv6, Exempt: spec.Exempt}
	if spec.Host != nil {
		in.HostCgroups = spec.Host.Cgroups
	}
	return in
}

// syncLayer1 applies (enforce) or checks layer 1. It never fails the sync:
// layer 2 is checked independently, and what is wrong is in the status.
func (a *Agent) syncLayer1(ctx context.Context, enforce bool, in firewall.Intent) *status.NFTStatus {
	if a.l1 == nil || a.l1.open == nil {
		return nil
	}
	l1 := a.l1
	l1.mu.Lock()
	defer l1.mu.Unlock()
	st := &status.NFTStatus{Enabled: true, SurvivesFlush: "no", SurvivesStop: "no"}
	if l1.l == nil {
		l, err := l1.open(a.cfg.IPv6)
		if err != nil {
			st.Error = err.Error()
			return st
		}
		l1.l = l
		f := l.Flags()
		a.log.WithFields(logrus.Fields{"flags": f.String(), "port": l.Port()}).Info("nftables layer: using table flags")
	}
	l1.l.SetIntent(in)
	if l1.dockerNFT != nil {
		if ok, err := l1.dockerNFT(); err == nil {
			st.DockerNFTables = ok
		}
	}
	var ns firewall.NFTState
	var err error
	if enforce {
		ns, err = l1.l.EnsureNFT(ctx)
	} else {
		ns, err = l1.l.CheckNFT(ctx)
	}
	st.Present, st.Owner, st.Persist, st.Owned, st.OwnerPort = ns.Present, ns.Flags.Owner, ns.Flags.Persist, ns.Owned, ns.OwnerPort
	st.SurvivesFlush, st.SurvivesStop = yesNo(ns.SurvivesFlush), yesNo(ns.SurvivesStop)
	st.Skipped = ns.Skipped
	for _, p := range ns.Problems {
		if !enforce && p.Reason == firewall.ReasonNFTOwnedByOther {
			continue // a one-shot check: the daemon's socket owns them
		}
		st.Problems = append(st.Problems, p.Detail)
		if enforce && ns.Present {
			a.log.WithField("reason", p.Reason).Infof("nftables layer: rebuilt: %s", p.Detail)
		}
	}
	if err != nil {
		st.Error = err.Error()
		a.log.WithError(err).Error("nftables layer")
	}
	cur := [2]uint64{ns.Packets, ns.Bytes}
	delta := [2]uint64{cur[0] - l1.last[0], cur[1] - l1.last[1]}
	if ns.Rebuilt || cur[0] < l1.last[0] || cur[1] < l1.last[1] {
		delta = cur
	}
	l1.last = cur
	l1.total[0] += delta[0]
	l1.total[1] += delta[1]
	st.BlockedPackets, st.BlockedBytes = l1.total[0], l1.total[1]
	return st
}

// closeLayer1 releases the owning socket: with persist the tables stay,
// orphaned, for the next agent to take over; without it the kernel deletes
// them and layer 2 is what keeps blocking.
func (a *Agent) closeLayer1() {
	a.pruneTaskLayers(nil)
	if a.l1 == nil {
		return
	}
	a.l1.mu.Lock()
	defer a.l1.mu.Unlock()
	if a.l1.l != nil {
		if err := a.l1.l.Close(); err != nil {
			a.log.WithError(err).Warn("nftables layer: closing its socket")
		}
		a.l1.l = nil
	}
}

// mergeLayers folds layer 1 into the per-family verdict: a family is
// blocked when either layer holds it. It returns the issues that make the
// verdict degraded: a layer that should exist and does not.
func mergeLayers(families []firewall.Family, enforced map[string]bool, nft *status.NFTStatus) []string {
	if nft == nil {
		return nil
	}
	var issues []string
	l2 := true
	for _, f := range families {
		ok := enforced[string(f)]
		l2 = l2 && ok
		if nft.Present {
			enforced[string(f)] = true
		}
	}
	switch {
	case !nft.Present && nft.Error != "":
		issues = append(issues, "the nftables layer (table inet "+firewall.NFTTable+") is not in place: "+nft.Error)
	case !nft.Present:
		issues = append(issues, fmt.Sprintf("the nftables layer (table inet %s) is not in place: %v", firewall.NFTTable, nft.Problems))
	case nft.Owner && nft.OwnerPort == 0:
		issues = append(issues, "the nftables tables are whole but no running imdsguard owns them: the next `nft flush ruleset` would delete them")
	}
	for _, sk := range nft.Skipped {
		if strings.HasPrefix(sk, "exemption ") {
			issues = append(issues, "nftables layer: "+sk)
		}
	}
	if nft.Present && !l2 {
		issues = append(issues, "the iptables layer is not in place; the nftables layer still blocks")
	}
	return issues
}

// RealNFT is the NFTFactory for the host's own namespace.
func RealNFT(action firewall.Action) NFTFactory {
	return func(ipv6 bool) (*firewall.NFTLayer, error) {
		return firewall.OpenNFT(0, firewall.NFTSpec{Scope: firewall.ScopeHost, Action: action, IPv6: ipv6})
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
