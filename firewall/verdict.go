package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Packet is the first packet of a TCP connection to IMDS port 80.
type Packet struct {
	Family Family
	// Host: sent by a host-network process (raw/mangle/filter OUTPUT);
	// otherwise forwarded from a bridged container (raw and mangle
	// PREROUTING, mangle and filter FORWARD).
	Host bool
	// Src is the source address. Invalid: unknown.
	Src netip.Addr
	// InIface is the input interface iptables sees for a forwarded
	// packet: the bridge (docker0, br-…). Empty: unknown.
	InIface string
	// BridgePort is the host-side veth the packet entered the bridge by
	// (-m physdev --physdev-in). Empty: unknown.
	BridgePort string
	// BridgeNF says whether bridge netfilter hands the bridge port to
	// iptables (net.bridge.bridge-nf-call-iptables=1 for IPv4,
	// -ip6tables for IPv6). Without it no --physdev-in rule matches.
	// Maybe: take the Ruleset's.
	BridgeNF Tri
	// Cgroup is the sending socket's cgroup v2 path (host network only).
	// Empty: unknown.
	Cgroup string
	// Anonymous stands for "any other container": Src, BridgePort and
	// Cgroup are then values that no rule names exactly (a /32, /128, a
	// port name or cgroup path without wildcard does not match; prefixes
	// and wildcards might). It is the probe for a container the agent has
	// not seen yet.
	Anonymous bool
}

// Tri is a three-valued truth: whether a match holds for the packet.
type Tri int

const (
	Maybe Tri = iota
	No
	Yes
)

func triOf(b bool) Tri {
	if b {
		return Yes
	}
	return No
}

func (t Tri) not() Tri {
	switch t {
	case Yes:
		return No
	case No:
		return Yes
	}
	return Maybe
}

// and combines the matches of one rule: all must hold.
func (t Tri) and(u Tri) Tri {
	switch {
	case t == No || u == No:
		return No
	case t == Yes && u == Yes:
		return Yes
	}
	return Maybe
}

// LayerResult is one layer's answer for one packet. Layers are the
// independent filters a packet crosses (iptables today; a nftables table
// later); the packet is dropped when any layer drops it.
type LayerResult struct {
	Layer   string `json:"layer"`
	Dropped bool   `json:"dropped"`
	// Table, Chain and Rule name the rule that drops the packet, or, when
	// it is not dropped, the first rule (or chain policy) it may pass by.
	Table string `json:"table,omitempty"`
	Chain string `json:"chain,omitempty"`
	Rule  string `json:"rule,omitempty"`
}

func (r LayerResult) String() string {
	verb := "may pass"
	if r.Dropped {
		verb = "dropped"
	}
	if r.Rule == "" {
		return r.Layer + ": " + verb
	}
	return fmt.Sprintf("%s: %s by %s %s: %s", r.Layer, verb, r.Table, r.Chain, r.Rule)
}

// Verdict combines the layers' results for one packet.
type Verdict struct {
	Layers []LayerResult `json:"layers"`
}

// Dropped reports whether any layer drops the packet.
func (v Verdict) Dropped() bool {
	return slices.ContainsFunc(v.Layers, func(l LayerResult) bool { return l.Dropped })
}

// Why is one line for status: the layer that drops, or why none does.
func (v Verdict) Why() string {
	for _, l := range v.Layers {
		if l.Dropped {
			return l.String()
		}
	}
	parts := make([]string, 0, len(v.Layers))
	for _, l := range v.Layers {
		parts = append(parts, l.String())
	}
	if len(parts) == 0 {
		return "no firewall layer was read"
	}
	return strings.Join(parts, "; ")
}
