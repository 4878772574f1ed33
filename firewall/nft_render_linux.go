//go:build linux

package firewall

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Chain names and priorities of layer 1.
//
// forward, priority -200: every forward priority runs after prerouting
// DNAT, so the destination is the real one whatever the priority; -200 runs
// ahead of every iptables table in that hook (mangle -150, filter 0) and of
// Docker 29's filter-FORWARD (0), so our counters see each blocked packet
// first and no mangle rule can rewrite ExemptMark before we read it. Only
// exactly 169.254.169.254/32 and fd00:ec2::254/128 match: the ECS agent's
// DNAT of 169.254.170.2 happens in prerouting and is never seen here.
//
// output, priority -10: after nat OUTPUT (-100, where ecs-init redirects
// 169.254.170.2 for host processes), before iptables' filter OUTPUT (0).
//
// bridge prerouting, priority -350: the only place the bridge port a frame
// came in on (the container's veth, which it cannot choose) is visible;
// ahead of ebtables' nat (-300) and filter (-200) chains.
const (
	nftForward   = "forward"
	nftOutput    = "output"
	nftPorts     = "prerouting"
	prioForward  = nftables.ChainPriority(-200)
	prioOutput   = nftables.ChainPriority(-10)
	prioBridge   = nftables.ChainPriority(-350)
	ifnameSize   = unix.IFNAMSIZ
	nfprotoIPv4  = unix.NFPROTO_IPV4
	nfprotoIPv6  = unix.NFPROTO_IPV6
	ethTypeIPv4  = 0x0800
	ethTypeIPv6  = 0x86dd
	tableFlagOwn = 0x2 // NFT_TABLE_F_OWNER
	tableFlagPer = 0x4 // NFT_TABLE_F_PERSIST
)

// nftTableSpec is one table as layer 1 wants it.
type nftTableSpec struct {
	family nftables.TableFamily
	chains []nftChainSpec
}

type nftChainSpec struct {
	name  string
	hook  nftables.ChainHook
	prio  nftables.ChainPriority
	rules []nftRuleSpec
}

type nftRuleSpec struct {
	text   string // what `nft list` would print, for problems and logs
	exprs  []expr.Any
	blocks bool // its counter counts blocked traffic
}

func (t nftTableSpec) String() string { return familyName(t.family) + " " + NFTTable }

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	}
	return fmt.Sprintf("family %d", f)
}

// imdsMatch is one family's destination: which nfproto (inet), ethertype
// (bridge), and where in the network header the address sits.
type imdsMatch struct {
	name    string // "ip" or "ip6"
	nfproto byte
	ethType uint16
	offset  uint32
	addr    netip.Addr
}

var (
	imdsV4 = imdsMatch{"ip", nfprotoIPv4, ethTypeIPv4, 16, netip.MustParseAddr("169.254.169.254")}
	imdsV6 = imdsMatch{"ip6", nfprotoIPv6, ethTypeIPv6, 24, netip.MustParseAddr("fd00:ec2::254")}
)

func (s NFTSpec) families() []imdsMatch {
	if s.IPv6 {
		return []imdsMatch{imdsV4, imdsV6}
	}
	return []imdsMatch{imdsV4}
}

// daddr matches the family and the exact IMDS address. In the bridge family
// the family comes from the frame's protocol, in inet from nfproto.
func (m imdsMatch) daddr(bridge bool) []expr.Any {
	var proto []expr.Any
	if bridge {
		proto = []expr.Any{
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(m.ethType)},
		}
	} else {
		proto = []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{m.nfproto}},
		}
	}
	return append(proto,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: m.offset, Len: uint32(m.addr.BitLen() / 8)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: m.addr.AsSlice()},
	)
}

// verdict renders the block, after the rule that logs it (nflogRule): one
// drop, or for reject a TCP reset for TCP and an ICMP port unreachable for
// the rest, each with its counter.
func (s NFTSpec) verdict(match []expr.Any, text string, where Where, cgroup uint64) []nftRuleSpec {
	log := nflogRule(match, text, NFLogPrefix(where, cgroup))
	counter := &expr.Counter{}
	if s.Action != ActionReject {
		return []nftRuleSpec{log, {text: text + " counter drop", blocks: true,
			exprs: slices.Concat(match, []expr.Any{counter, &expr.Verdict{Kind: expr.VerdictDrop}})}}
	}
	tcp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
	return []nftRuleSpec{log,
		{text: text + " meta l4proto tcp counter reject with tcp reset", blocks: true,
			exprs: slices.Concat(match, tcp, []expr.Any{&expr.Counter{}, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})},
		{text: text + " counter reject with icmpx port-unreachable", blocks: true,
			exprs: slices.Concat(match, []expr.Any{&expr.Counter{}, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}})},
	}
}

// nflogRule hands the packets match selects to imdsguard (NFLogGroup),
// at most NFLogRate a second: over the limit the rule ends there, and the
// packet goes on to the drop in the next rule either way.
func nflogRule(match []expr.Any, text, prefix string) nftRuleSpec {
	return nftRuleSpec{
		text: fmt.Sprintf("%s limit rate %d/second burst %d packets log prefix %q group %d snaplen %d",
			text, NFLogRate, NFLogBurst, prefix, NFLogGroup, NFLogSnaplen),
		exprs: slices.Concat(match, []expr.Any{
			&expr.Limit{Type: expr.LimitTypePkts, Rate: NFLogRate, Unit: expr.LimitTimeSecond, Burst: NFLogBurst},
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_SNAPLEN,
				Group: NFLogGroup, Snaplen: NFLogSnaplen, Data: []byte(prefix)},
		}),
	}
}

// markClear matches packets without ExemptMark.
func markClear() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ExemptMark), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// markSet ors ExemptMark into the packet mark, keeping every other bit.
func markSet() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^ExemptMark), Xor: binaryutil.NativeEndian.PutUint32(ExemptMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

func ifname(n string) []byte {
	b := make([]byte, ifnameSize)
	copy(b, n)
	return b
}

// cgroupID resolves a cgroup v2 path to the id `socket cgroupv2` compares
// with, and its depth: the kernel matches the socket's ancestor at that
// level, so the path's descendants are covered too.
type cgroupID func(path string) (uint64, error)

// render turns the spec into tables. skipped lists what could not be
// rendered; none of it weakens the block (an exemption without a port stays
// blocked, a vanished cgroup has nothing left to send).
func (s NFTSpec) render(resolve cgroupID) (tables []nftTableSpec, skipped []string) {
	inet := nftTableSpec{family: nftables.TableFamilyINet}
	var output []nftRuleSpec
	for _, m := range s.families() {
		d := fmt.Sprintf("%s daddr %s", m.name, m.addr)
		if s.Scope == ScopeTask {
			output = append(output, s.verdict(m.daddr(false), d, WhereTask, 0)...)
		}
	}
	if s.Scope == ScopeTask {
		inet.chains = []nftChainSpec{{name: nftOutput, hook: *nftables.ChainHookOutput, prio: prioOutput, rules: output}}
		return []nftTableSpec{inet}, nil
	}

	// Host: output for the host-network containers' cgroups.
	paths := slices.Clone(s.HostCgroups)
	slices.Sort(paths)
	for _, p := range slices.Compact(paths) {
		if !ValidCgroupPath(p) {
			skipped = append(skipped, fmt.Sprintf("cgroup %q: not a cgroup v2 path", p))
			continue
		}
		id, err := resolve(p)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("cgroup %q: %v", p, err))
			continue
		}
		level := uint32(strings.Count(p, "/"))
		for _, m := range s.families() {
			match := slices.Concat(m.daddr(false), []expr.Any{
				&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: level, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint64(id)},
			})
			output = append(output, s.verdict(match, fmt.Sprintf("%s daddr %s socket cgroupv2 level %d %q", m.name, m.addr, level, p), WhereCgroup, id)...)
		}
	}

	// Forward: everything routed to IMDS unless the bridge chain marked it.
	var forward []nftRuleSpec
	for _, m := range s.families() {
		forward = append(forward, s.verdict(slices.Concat(m.daddr(false), markClear()),
			fmt.Sprintf("%s daddr %s meta mark & %#x == 0", m.name, m.addr, ExemptMark), WhereForward, 0)...)
	}
	inet.chains = []nftChainSpec{
		{name: nftForward, hook: *nftables.ChainHookForward, prio: prioForward, rules: forward},
		{name: nftOutput, hook: *nftables.ChainHookOutput, prio: prioOutput, rules: output},
	}

	// Bridge: exempt ports are marked and pass, every other port is blocked.
	var ports []string
	for _, e := range s.Exempt {
		if !ValidPort(e.Port) {
			skipped = append(skipped, fmt.Sprintf("exemption %s: no valid bridge port (%q), it stays blocked in layer 1", e.Name, e.Port))
			continue
		}
		ports = append(ports, e.Port)
	}
	slices.Sort(ports)
	var bridge []nftRuleSpec
	for _, p := range slices.Compact(ports) {
		for _, m := range s.families() {
			bridge = append(bridge, nftRuleSpec{
				text: fmt.Sprintf("%s daddr %s iifname %q counter meta mark set meta mark | %#x accept", m.name, m.addr, p, ExemptMark),
				exprs: slices.Concat(m.daddr(true), []expr.Any{
					&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(p)},
					&expr.Counter{},
				}, markSet(), []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}),
			})
		}
	}
	// With drop, the bridge chain drops every other port's IMDS frames as
	// early as the kernel can, and no mark anybody sets later matters for
	// them. Reject is left to the forward chain: many kernels lack
	// reject in the bridge family (nft_reject_bridge; this test kernel
	// answers ENOENT), and a bridged drop would pre-empt the reset.
	if s.Action != ActionReject {
		for _, m := range s.families() {
			bridge = append(bridge, s.verdict(m.daddr(true), fmt.Sprintf("%s daddr %s", m.name, m.addr), WhereBridge, 0)...)
		}
	}
	br := nftTableSpec{family: nftables.TableFamilyBridge, chains: []nftChainSpec{
		{name: nftPorts, hook: *nftables.ChainHookPrerouting, prio: prioBridge, rules: bridge},
	}}
	return []nftTableSpec{inet, br}, skipped
}

// ruleKey identifies a rule by what the kernel executes: its expressions as
// netlink encodes them, counters zeroed. Read-back rules are keyed the same
// way, so a rule someone altered never compares equal to ours.
func ruleKey(fam nftables.TableFamily, exprs []expr.Any) (key string, packets, bytes uint64, err error) {
	var b strings.Builder
	for _, e := range exprs {
		if c, ok := e.(*expr.Counter); ok {
			packets += c.Packets
			bytes += c.Bytes
			e = &expr.Counter{}
		}
		m, err := expr.Marshal(byte(fam), e)
		if err != nil {
			return "", 0, 0, fmt.Errorf("encoding %T: %w", e, err)
		}
		b.WriteString(hex.EncodeToString(m))
		b.WriteByte('/')
	}
	return b.String(), packets, bytes, nil
}
