//go:build linux

package tasknet

import (
	"errors"
	"fmt"
	"slices"

	"github.com/imdsguard/imdsguard/firewall"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Blackhole adds, per family, the blackhole route to IMDS in the main
// table (what the ECS CNI plugins add) and imdsguard's guard rule: a
// policy rule that blackholes IMDS ahead of every other rule, so no route
// in any table (local included), no tos and no rule a task adds can pass.
func (n *Namespaces) Blackhole(path string, fams []firewall.Family) error {
	ns, err := n.open(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	var errs []error
	for _, f := range fams {
		// Replace, not add: an existing route for exactly this destination
		// and metric (a task's own "via" route) gives way to the blackhole.
		rt := &netlink.Route{Dst: imdsNet(f), Type: unix.RTN_BLACKHOLE, Table: unix.RT_TABLE_MAIN}
		if err := h.RouteReplace(rt); err != nil {
			errs = append(errs, fmt.Errorf("adding blackhole %s in %s: %w", rt.Dst, path, err))
		}
		if err := ensureGuard(ns, h, f); err != nil {
			errs = append(errs, fmt.Errorf("%s guard rule in %s: %w", f, path, err))
		}
	}
	return errors.Join(errs...)
}

// ensureGuard makes imdsguard's rule the first of the family. Nothing can
// go below priority 0, and a rule joins the end of its priority, so once
// ours leads priority 0 every rule added later comes after it. The kernel's
// own "lookup local" also sits at 0, and a task may add a route to IMDS to
// the local table: it goes behind the guard without a moment when no local
// rule exists — moved to priority 1 when that is free (the order against
// every other rule stays), else re-added at 0 behind the guard with a
// stand-in at 1 meanwhile (rules the task has at 1 stay behind it). Rules
// found ahead of ours — added while ours was deleted — are deleted: in
// enforce mode nothing may route IMDS traffic before imdsguard does.
func ensureGuard(ns netns.NsHandle, h *netlink.Handle, f firewall.Family) error {
	fam := nlFamily(f)
	rules, err := listRules(ns, fam)
	if err != nil {
		return err
	}
	if guardFirst(rules) {
		return nil
	}
	has := func(ok func(policyRule) bool) bool { return slices.ContainsFunc(rules, ok) }
	local := func(pref int, proto uint8) *netlink.Rule {
		r := netlink.NewRule()
		r.Family, r.Priority, r.Table, r.Protocol = fam, pref, unix.RT_TABLE_LOCAL, proto
		return r
	}
	guard := netlink.NewRule()
	guard.Family, guard.Priority, guard.Dst, guard.Type, guard.Protocol = fam, 0, imdsNet(f), unix.FR_ACT_BLACKHOLE, guardProtocol
	if !has(policyRule.isGuard) {
		var steps []func() error
		switch {
		case !has(func(r policyRule) bool { return r.isLocal() && r.Pref == 0 }):
			steps = []func() error{func() error { return h.RuleAdd(guard) }}
		case !has(func(r policyRule) bool { return r.Pref == 1 && !r.isLocal() }):
			steps = []func() error{
				func() error {
					if has(func(r policyRule) bool { return r.isLocal() && r.Pref == 1 }) {
						return nil
					}
					return h.RuleAdd(local(1, 0))
				},
				func() error { return h.RuleDel(local(0, 0)) },
				func() error { return h.RuleAdd(guard) },
			}
		default:
			// The stand-in carries our protocol, so deleting it cannot
			// take a rule of the task's.
			steps = []func() error{
				func() error { return h.RuleAdd(guard) },
				func() error { return h.RuleAdd(local(1, guardProtocol)) },
				func() error { return h.RuleDel(local(0, 0)) },
				func() error { return h.RuleAdd(local(0, 0)) },
				func() error { return h.RuleDel(local(1, guardProtocol)) },
			}
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return fmt.Errorf("putting the guard rule first: %w", err)
			}
		}
		if rules, err = listRules(ns, fam); err != nil {
			return err
		}
	}
	at := slices.IndexFunc(rules, policyRule.isGuard)
	localBehind := at >= 0 && slices.ContainsFunc(rules[at+1:], policyRule.isLocal)
	var errs []error
	for _, r := range rules[:max(at, 0)] {
		if r.isLocal() && !localBehind {
			continue // the only local rule: judged by the lookups instead
		}
		// Only priority 0 can be ahead of ours; delete by every attribute
		// the kernel matches on that this rule has, never ours (action).
		d := netlink.NewRule()
		d.Family, d.Priority, d.Table, d.Type, d.Protocol, d.Src, d.Dst = fam, r.Pref, r.Table, r.Action, r.Protocol, r.Src, r.Dst
		if err := h.RuleDel(d); err != nil {
			errs = append(errs, fmt.Errorf("deleting %q, ahead of the guard rule: %w", r.String(), err))
		}
	}
	return errors.Join(errs...)
}
