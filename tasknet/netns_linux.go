//go:build linux

package tasknet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/firewall"
)

// Namespaces reads and enforces IMDS routes in other network namespaces
// over rtnetlink, one handle per call.
type Namespaces struct {
	// host are the namespaces never acted on: the agent's own and PID 1's.
	host []nsID
}

// nsID identifies a network namespace (nsfs inode on its device).
type nsID struct{ dev, ino uint64 }

// NewNamespaces returns the rtnetlink Namespaces. It records the agent's
// and PID 1's namespaces first, so that a path that turns out to be one of
// them — Docker's ".../netns/default", a reused pid — is refused.
func NewNamespaces() (*Namespaces, error) {
	var n Namespaces
	var errs []error
	for _, p := range []string{"/proc/self/ns/net", "/proc/1/ns/net"} {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			if p == "/proc/1/ns/net" && errors.Is(err, os.ErrPermission) {
				continue // a pid namespace without PID 1's; the agent's own still counts
			}
			errs = append(errs, fmt.Errorf("identifying the host namespace %s: %w", p, err))
			continue
		}
		n.host = append(n.host, nsID{uint64(st.Dev), st.Ino})
	}
	return &n, errors.Join(errs...)
}

// open opens the namespace at path and refuses the host's. The returned
// handle is what every later call acts on, so the check cannot be raced.
func (n *Namespaces) open(path string) (netns.NsHandle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return h, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		h.Close()
		return netns.None(), fmt.Errorf("identifying network namespace %s: %w", path, err)
	}
	for _, id := range n.host {
		if id == (nsID{uint64(st.Dev), st.Ino}) {
			h.Close()
			return netns.None(), fmt.Errorf("%s: %w", path, ErrHostNamespace)
		}
	}
	return h, nil
}

var native = nl.NativeEndian()

func imdsNet(f firewall.Family) *net.IPNet {
	if f == firewall.IPv6 {
		return imdsNet6
	}
	return imdsNet4
}

// retryDump repeats a netlink dump the kernel interrupted (the table
// changed under it), which would otherwise be a partial answer.
func retryDump[T any](fn func() (T, error)) (T, error) {
	var v T
	var err error
	for range 5 {
		if v, err = fn(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

func (n *Namespaces) Routes(path string) (NSRoutes, error) {
	var r NSRoutes
	ns, err := n.open(path)
	if err != nil {
		return r, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return r, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	v4, err := retryDump(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return r, fmt.Errorf("listing IPv4 routes in %s: %w", path, err)
	}
	v6, err := retryDump(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_V6) })
	if err != nil {
		return r, fmt.Errorf("listing IPv6 routes in %s: %w", path, err)
	}
	addrs6, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V6) })
	if err != nil {
		return r, fmt.Errorf("listing IPv6 addresses in %s: %w", path, err)
	}
	r.V4Blackhole = blackholed(toRouteInfo(v4), imdsNet(firewall.IPv4))
	r.V6Blackhole = blackholed(toRouteInfo(v6), imdsNet(firewall.IPv6))
	r.HasIPv6 = hasIPv6(toRouteInfo(v6), addrScopes(addrs6))
	// What the kernel would do with a packet to IMDS: the policy rules,
	// then a route lookup from every source the task could use.
	fams := []firewall.Family{firewall.IPv4}
	if r.HasIPv6 {
		fams = append(fams, firewall.IPv6)
	}
	for _, f := range fams {
		p, err := n.judge(ns, h, f, map[firewall.Family]bool{firewall.IPv4: r.V4Blackhole, firewall.IPv6: r.V6Blackhole}[f])
		if err != nil {
			return r, fmt.Errorf("%s in %s: %w", f, path, err)
		}
		if f == firewall.IPv6 {
			r.V6Guard, r.V6Escape = p.Guard, p.Escape
		} else {
			r.V4Guard, r.V4Escape = p.Guard, p.Escape
		}
	}
	return r, nil
}

func nlFamily(f firewall.Family) int {
	if f == firewall.IPv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// judge reads one family's policy rules and asks the kernel for the route
// to IMDS from each of the namespace's addresses and from none.
func (n *Namespaces) judge(ns netns.NsHandle, h *netlink.Handle, f firewall.Family, mainBlackhole bool) (familyPath, error) {
	rules, err := listRules(ns, nlFamily(f))
	if err != nil {
		return familyPath{}, err
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, nlFamily(f)) })
	if err != nil {
		return familyPath{}, fmt.Errorf("listing addresses: %w", err)
	}
	var tos []routeInfo
	if f == firewall.IPv4 {
		all, err := retryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return familyPath{}, fmt.Errorf("listing routes of every table: %w", err)
		}
		for _, rt := range all {
			if rt.Tos != 0 {
				tos = append(tos, routeInfo{dst: rt.Dst, blackhole: refusing(rt.Type), priority: rt.Priority, table: rt.Table, tos: rt.Tos})
			}
		}
	}
	srcs := []net.IP{nil}
	for _, a := range addrs {
		srcs = append(srcs, a.IP)
	}
	// One line per way out, with the sources that take it.
	var escapes []string
	from := map[string][]string{}
	for _, src := range srcs {
		rs, err := h.RouteGetWithOptions(imdsNet(f).IP, &netlink.RouteGetOptions{SrcAddr: src})
		esc, err := lookupEscape(rs, err)
		if err != nil {
			return familyPath{}, fmt.Errorf("route lookup to %s from %v: %w", imdsNet(f).IP, src, err)
		}
		if esc == "" {
			continue
		}
		if _, ok := from[esc]; !ok {
			escapes = append(escapes, esc)
		}
		name := "any source"
		if src != nil {
			name = src.String()
		}
		from[esc] = append(from[esc], name)
	}
	for i, esc := range escapes {
		escapes[i] = esc + " from " + strings.Join(from[esc], ", ")
	}
	return judgePath(rules, escapes, mainBlackhole, tosRoutes(tos, imdsNet(f))), nil
}

// refusing: route types that send nothing.
func refusing(t int) bool {
	return t == unix.RTN_BLACKHOLE || t == unix.RTN_UNREACHABLE || t == unix.RTN_PROHIBIT
}

// lookupEscape turns a route lookup's answer into how a packet would leave
// ("" when the kernel refuses it). A blackhole, unreachable or prohibit
// route or rule makes the lookup fail with EINVAL, EHOSTUNREACH, EACCES,
// and no route at all with ENETUNREACH; any other error is no answer.
func lookupEscape(rs []netlink.Route, err error) (string, error) {
	for _, e := range []error{unix.EINVAL, unix.ENETUNREACH, unix.EHOSTUNREACH, unix.EACCES, unix.EPERM} {
		if errors.Is(err, e) {
			return "", nil
		}
	}
	if err != nil {
		return "", err
	}
	if len(rs) == 0 {
		return "", errors.New("the kernel returned no route")
	}
	rt := rs[0]
	if refusing(rt.Type) {
		return "", nil
	}
	esc := "routed"
	if rt.Gw != nil {
		esc += " via " + rt.Gw.String()
	}
	if rt.LinkIndex > 0 {
		esc += fmt.Sprintf(" out of interface %d", rt.LinkIndex)
	}
	return esc + fmt.Sprintf(" (table %d)", rt.Table), nil
}

// listRules dumps a family's policy rules in the kernel's order. It reads
// the messages itself: the netlink library's RuleList drops the action
// (blackhole, lookup, nop), which tells imdsguard's rule from a copy.
func listRules(ns netns.NsHandle, family int) ([]policyRule, error) {
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	defer sock.Close()
	var out []policyRule
	_, err = retryDump(func() (struct{}, error) {
		out = out[:0]
		req := &nl.NetlinkRequest{
			NlMsghdr: unix.NlMsghdr{Len: unix.SizeofNlMsghdr, Type: unix.RTM_GETRULE, Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP},
			Sockets:  map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: sock}},
		}
		req.AddData(nl.NewIfInfomsg(family))
		msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWRULE)
		for _, m := range msgs {
			r, perr := parseRule(m)
			if perr != nil {
				return struct{}{}, perr
			}
			out = append(out, r)
		}
		if errors.Is(err, nl.ErrDumpInterrupted) {
			return struct{}{}, netlink.ErrDumpInterrupted
		}
		return struct{}{}, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing policy rules: %w", err)
	}
	return out, nil
}

// ruleSelectors name the rule attributes that always restrict a match.
var ruleSelectors = map[uint16]string{
	nl.FRA_IIFNAME: "iif", nl.FRA_OIFNAME: "oif", nl.FRA_IP_PROTO: "ipproto",
	nl.FRA_SPORT_RANGE: "sport", nl.FRA_DPORT_RANGE: "dport", nl.FRA_TUN_ID: "tun_id",
}

func parseRule(m []byte) (policyRule, error) {
	msg := nl.DeserializeRtMsg(m)
	attrs, err := nl.ParseRouteAttr(m[msg.Len():])
	if err != nil {
		return policyRule{}, fmt.Errorf("parsing a policy rule: %w", err)
	}
	r := policyRule{Action: msg.Type, Table: int(msg.Table), Family: int(msg.Family)}
	var sel []string
	if msg.Tos != 0 {
		sel = append(sel, "tos")
	}
	if msg.Flags&netlink.FibRuleInvert != 0 {
		sel = append(sel, "not")
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case nl.FRA_PRIORITY:
			r.Pref = int(native.Uint32(a.Value))
		case nl.FRA_TABLE:
			r.Table = int(native.Uint32(a.Value))
		case nl.FRA_PROTOCOL:
			r.Protocol = a.Value[0]
		case nl.FRA_DST:
			r.Dst = &net.IPNet{IP: a.Value, Mask: net.CIDRMask(int(msg.Dst_len), 8*len(a.Value))}
		case nl.FRA_SRC:
			r.Src = &net.IPNet{IP: a.Value, Mask: net.CIDRMask(int(msg.Src_len), 8*len(a.Value))}
		case nl.FRA_FWMARK, nl.FRA_FWMASK:
			if native.Uint32(a.Value) != 0 {
				sel = append(sel, "fwmark")
			}
		case nl.FRA_IIFNAME, nl.FRA_OIFNAME, nl.FRA_IP_PROTO, nl.FRA_SPORT_RANGE, nl.FRA_DPORT_RANGE, nl.FRA_TUN_ID:
			sel = append(sel, ruleSelectors[a.Attr.Type])
		case nl.FRA_UID_RANGE:
			// The kernel reports the full range for rules without one.
			if native.Uint32(a.Value[0:4]) != 0 || native.Uint32(a.Value[4:8]) != ^uint32(0) {
				sel = append(sel, "uidrange")
			}
		case unix.FRA_L3MDEV:
			if a.Value[0] != 0 {
				sel = append(sel, "l3mdev")
			}
		}
	}
	r.Selectors = strings.Join(slices.Compact(sel), ",")
	return r, nil
}

func toRouteInfo(rs []netlink.Route) []routeInfo {
	out := make([]routeInfo, 0, len(rs))
	for _, r := range rs {
		out = append(out, routeInfo{dst: r.Dst, blackhole: r.Type == unix.RTN_BLACKHOLE, priority: r.Priority, table: r.Table})
	}
	return out
}

func addrScopes(as []netlink.Addr) []addrInfo {
	out := make([]addrInfo, 0, len(as))
	for _, a := range as {
		out = append(out, addrInfo{ip: a.IP, global: a.Scope == unix.RT_SCOPE_UNIVERSE})
	}
	return out
}

// Watch calls changed once subscribed, then on every route or policy rule
// change in the namespace: any of them can change where a packet to IMDS goes (a rule
// to another table, a route added to it), so none is filtered out.
func (n *Namespaces) Watch(ctx context.Context, path string, changed func()) error {
	ns, err := n.open(path)
	if err != nil {
		return err
	}
	s, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE,
		unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE, unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE)
	// The subscription socket lives in the namespace now; the handle is no
	// longer needed, and holding it would keep a dead task's namespace.
	ns.Close()
	if err != nil {
		return fmt.Errorf("watching routes and rules in %s: %w", path, err)
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	defer s.Close()
	// A change between the sync that started this watch and the
	// subscription would go unseen until the periodic resync: one sync now
	// covers it.
	changed()
	for {
		msgs, _, err := s.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("watching routes and rules in %s: %w", path, err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.RTM_NEWROUTE, unix.RTM_DELROUTE, unix.RTM_NEWRULE, unix.RTM_DELRULE:
				changed()
			}
		}
	}
}
