package tasknet

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/docker"
)

// BridgePorts finds bridge ports over rtnetlink: every veth in the
// container's namespace names its peer by index (IFLA_LINK); the peer must be
// a veth in our namespace that names the container's interface back and is
// enslaved to a bridge. The container can change its addresses, but not
// which host interface its veth is paired with.
type BridgePorts struct{}

func (BridgePorts) Ports(pid int) (map[netip.Addr]docker.BridgePort, error) {
	if pid <= 0 {
		return nil, errors.New("no process to find the network namespace by")
	}
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return nil, fmt.Errorf("network namespace of pid %d: %w", pid, err)
	}
	defer ns.Close()
	self, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("own network namespace: %w", err)
	}
	defer self.Close()
	if ns.Equal(self) {
		return nil, errors.New("the container shares the host's network namespace")
	}
	in, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in the container's namespace: %w", err)
	}
	defer in.Close()
	links, err := retryDump(in.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing the container's links: %w", err)
	}
	out := map[netip.Addr]docker.BridgePort{}
	for _, l := range links {
		la := l.Attrs()
		if l.Type() != "veth" || la.ParentIndex == 0 {
			continue
		}
		host, err := netlink.LinkByIndex(la.ParentIndex)
		if err != nil || host.Type() != "veth" || host.Attrs().ParentIndex != la.Index || host.Attrs().MasterIndex == 0 {
			continue
		}
		br, err := netlink.LinkByIndex(host.Attrs().MasterIndex)
		if err != nil || br.Type() != "bridge" {
			continue
		}
		addrs, err := retryDump(func() ([]netlink.Addr, error) { return in.AddrList(l, netlink.FAMILY_ALL) })
		if err != nil {
			return nil, fmt.Errorf("listing the addresses of %s: %w", la.Name, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				out[ip.Unmap()] = docker.BridgePort{Name: host.Attrs().Name, Bridge: br.Attrs().Name}
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no veth in the container's namespace is paired with a bridge port here")
	}
	return out, nil
}
