package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/imdsguard/imdsguard/firewall"
)

// exemptPorts finds the bridge ports of the exempt bridged containers:
// layer 1 exempts a port, which a neighbour cannot take over the way it
// can claim an address. A container whose ports cannot be found gets none
// and stays blocked in layer 1 (reported as skipped).
func (a *Agent) exemptPorts(ctx context.Context, containers []Container, exempt map[string]string) ([]firewall.NFTExemption, []string) {
	insp, _ := a.docker.(Inspector)
	var out []firewall.NFTExemption
	var problems []string
	for _, c := range containers {
		if class, _ := modeClass(c); exempt[c.ID] == "" || class != ModeBridge && class != ModeUserNet {
			continue
		}
		addrs := slices.Concat(c.IPv4, c.IPv6)
		if insp == nil {
			out = append(out, firewall.NFTExemption{Container: c.Name, Addrs: addrs})
			continue
		}
		d, err := insp.Inspect(ctx, c.ID)
		var ports []string
		if err == nil {
			ports, err = bridgePorts(nsPath(d))
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("exempt container %s: its bridge port: %v", c.Name, err))
		}
		if len(ports) == 0 {
			out = append(out, firewall.NFTExemption{Container: c.Name, Addrs: addrs})
		}
		for _, p := range ports {
			out = append(out, firewall.NFTExemption{Container: c.Name, Port: p, Addrs: addrs})
		}
	}
	return out, problems
}

// bridgePorts returns the host-side names of the veths whose other ends are
// in the namespace at path, and that are enslaved to a bridge.
func bridgePorts(path string) ([]string, error) {
	h, self, err := foreignNetns(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	defer self.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	// Listing the links first makes the kernel assign the ids of their
	// peers' namespaces, which the lookup below only reads.
	links, err := nh.LinkList()
	if err != nil {
		return nil, err
	}
	// The id the container's namespace gives ours: a veth's peer index
	// means an interface here only when its link netns id is this one.
	hostID, err := nh.GetNetNsIdByFd(int(self))
	if err != nil {
		return nil, fmt.Errorf("the host's namespace id as seen from %s: %w", path, err)
	}
	if hostID < 0 {
		return nil, fmt.Errorf("no veth of %s has its other end in this namespace", path)
	}
	var ports []string
	for _, l := range links {
		at := l.Attrs()
		if l.Type() != "veth" || at.ParentIndex <= 0 || at.NetNsID != hostID {
			continue
		}
		peer, err := netlink.LinkByIndex(at.ParentIndex)
		if err != nil {
			return nil, fmt.Errorf("peer of %s: %w", at.Name, err)
		}
		if peer.Type() == "veth" && peer.Attrs().MasterIndex > 0 {
			ports = append(ports, peer.Attrs().Name)
		}
	}
	slices.Sort(ports)
	return ports, nil
}

// openTaskNFT opens layer 1 in the task namespace at path, never the host's.
func openTaskNFT(path string, spec firewall.NFTSpec) (*firewall.NFTLayer, error) {
	h, self, err := foreignNetns(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	self.Close()
	return firewall.OpenNFT(int(h), spec)
}

// foreignNetns opens the namespace at path and ours, refusing path when it
// is ours: what is done there must never be done to the host.
func foreignNetns(path string) (h, self netns.NsHandle, err error) {
	if path == "" {
		return netns.None(), netns.None(), errors.New("no network namespace")
	}
	if h, err = netns.GetFromPath(path); err != nil {
		return netns.None(), netns.None(), err
	}
	if self, err = netns.Get(); err != nil {
		h.Close()
		return netns.None(), netns.None(), err
	}
	if h.Equal(self) {
		h.Close()
		self.Close()
		return netns.None(), netns.None(), fmt.Errorf("%s: %w", path, ErrHostNamespace)
	}
	return h, self, nil
}
