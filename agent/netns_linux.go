//go:build linux

package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/firewall"
)

// netlinkNamespaces is Namespaces over rtnetlink, one handle per call.
type netlinkNamespaces struct {
	// host are the namespaces never acted on: the agent's own and PID 1's.
	host []nsID
}

// nsID identifies a network namespace (nsfs inode on its device).
type nsID struct{ dev, ino uint64 }

// NewNamespaces returns the rtnetlink Namespaces. It records the agent's
// and PID 1's namespaces first, so that a path that turns out to be one of
// them — Docker's ".../netns/default", a reused pid — is refused.
func NewNamespaces() (Namespaces, error) {
	var n netlinkNamespaces
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
func (n *netlinkNamespaces) open(path string) (netns.NsHandle, error) {
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

func imdsNet(f firewall.Family) *net.IPNet {
	if f == firewall.IPv6 {
		return &net.IPNet{IP: net.ParseIP("fd00:ec2::254"), Mask: net.CIDRMask(128, 128)}
	}
	return &net.IPNet{IP: net.ParseIP("169.254.169.254").To4(), Mask: net.CIDRMask(32, 32)}
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

func (n *netlinkNamespaces) Routes(path string) (NSRoutes, error) {
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
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V6) })
	if err != nil {
		return r, fmt.Errorf("listing IPv6 addresses in %s: %w", path, err)
	}
	r.V4Blackhole = blackholed(toRouteInfo(v4), imdsNet(firewall.IPv4))
	r.V6Blackhole = blackholed(toRouteInfo(v6), imdsNet(firewall.IPv6))
	r.HasIPv6 = hasIPv6(toRouteInfo(v6), addrScopes(addrs))
	return r, nil
}

func toRouteInfo(rs []netlink.Route) []routeInfo {
	out := make([]routeInfo, 0, len(rs))
	for _, r := range rs {
		out = append(out, routeInfo{dst: r.Dst, blackhole: r.Type == unix.RTN_BLACKHOLE, priority: r.Priority})
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

func (n *netlinkNamespaces) Blackhole(path string, fams []firewall.Family) error {
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
	}
	return errors.Join(errs...)
}

func (n *netlinkNamespaces) Watch(ctx context.Context, path string, changed func()) error {
	ns, err := n.open(path)
	if err != nil {
		return err
	}
	ch := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	errc := make(chan error, 1)
	err = netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace: &ns,
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default:
			}
		},
	})
	// The subscription socket lives in the namespace now; the handle is no
	// longer needed, and holding it would keep a dead task's namespace.
	ns.Close()
	if err != nil {
		return fmt.Errorf("watching routes in %s: %w", path, err)
	}
	want := []*net.IPNet{imdsNet(firewall.IPv4), imdsNet(firewall.IPv6)}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("watching routes in %s: %w", path, err)
		case u, ok := <-ch:
			if !ok {
				return fmt.Errorf("watching routes in %s: subscription closed", path)
			}
			// Only IMDS routes matter: deleted, or replaced by something
			// that is not a blackhole.
			for _, w := range want {
				if ipNetEqual(u.Dst, w) && (u.Type == unix.RTM_DELROUTE || u.Route.Type != unix.RTN_BLACKHOLE) {
					changed()
				}
			}
		}
	}
}
