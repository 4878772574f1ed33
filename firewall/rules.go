package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Family is an IP family: one iptables binary each.
type Family string

const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

// Action is what IMDS-GUARD does with a packet for IMDS.
type Action string

const (
	// ActionDrop silently drops: the client waits for its own timeout.
	ActionDrop Action = "drop"
	// ActionReject answers with a TCP reset (or ICMP unreachable), so SDKs
	// give up sooner instead of waiting out connect timeouts.
	ActionReject Action = "reject"
)

// ParseAction validates a --action value.
func ParseAction(s string) (Action, error) {
	switch Action(s) {
	case ActionDrop, ActionReject:
		return Action(s), nil
	}
	return "", fmt.Errorf("invalid action %q: want drop or reject", s)
}

// Chain and table names. DOCKER-USER and FORWARD are not ours: only the single
// jump to IMDS-GUARD in each is (FORWARD's always, DOCKER-USER's while Docker's
// chain exists). Docker's own "FORWARD -j DOCKER-USER" is never ours.
const (
	Table      = "filter"
	Chain      = "IMDS-GUARD"
	DockerUser = "DOCKER-USER"
	Forward    = "FORWARD"
	// HostChain blocks IMDS for chosen host-network containers. It hangs
	// off OUTPUT, the only hook that sees traffic the host itself sends.
	HostChain = "IMDS-GUARD-HOST"
	Output    = "OUTPUT"
)

// IMDS addresses, exactly one host each: 169.254.170.2 (ECS task
// credentials), .123 (time sync) and .253 (DNS) share the link-local range and
// must stay reachable.
const (
	IMDSv4 = "169.254.169.254/32"
	IMDSv6 = "fd00:ec2::254/128"
)

// Spec is the desired state of the owned chains. The agent computes a new
// one from the running containers in every sync.
type Spec struct {
	Action Action
	// Exempt are the containers allowed to reach IMDS. Each gets two
	// ACCEPTs per address, ahead of the block, that match the address and
	// the container's own bridge port together (see Exemption).
	Exempt []Exemption
	// Host, when set, makes OUTPUT rule 1 jump to HostChain, which blocks
	// IMDS for sockets in these cgroup v2 paths. Nil leaves HostChain and
	// its jump alone.
	Host *HostSpec
}

// Exemption is one container's way through the block. It is shared by every
// firewall layer (iptables here, the nftables table later), so it says what
// to match, not how.
//
// Port is the host-side veth of the container's interface: the bridge port
// its frames enter by. A neighbour can take the container's address, but
// not its port, so an ACCEPT needs both: -s Addr and the port. iptables
// sees the port itself (--physdev-in Port) only through bridge netfilter
// (net.bridge.bridge-nf-call-iptables=1), which Docker 27.3 and later no
// longer load; so a second ACCEPT takes the port from layer 1, whose
// bridge chain marks (ExemptMark) the IMDS frames of exactly these ports,
// and the exempt container passes both layers whether or not bridge
// netfilter is on. With neither (no bridge netfilter, no layer 1) no
// ACCEPT matches and the container is blocked like any other (fail
// closed).
type Exemption struct {
	// Container and Name identify the container (short ID and name) for
	// status and logs.
	Container string `json:"container"`
	Name      string `json:"name"`
	// Port is the bridge port, a plain interface name (no "+" wildcard).
	Port string `json:"port"`
	// Addrs are the container's addresses behind Port, both families;
	// only single hosts (/32, /128) are ever rendered.
	Addrs []netip.Addr `json:"addrs"`
}

// ValidPort accepts a Linux interface name that iptables reads literally: at
// most 15 characters, no "+" (a wildcard), no separators.
func ValidPort(name string) bool {
	if name == "" || len(name) > 15 {
		return false
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return false
		}
	}
	return true
}

// HostSpec lists the cgroup v2 paths (as in the "0::" line of
// /proc/PID/cgroup) of host-network containers whose IMDS traffic is
// blocked.
type HostSpec struct {
	Cgroups []string
}

// imdsAddr is the destination the family blocks.
func imdsAddr(f Family) string {
	if f == IPv6 {
		return IMDSv6
	}
	return IMDSv4
}

// Rules renders the IMDS-GUARD body for a family in the normalized form that
// `iptables -S` prints, so the live chain can be compared line by line:
// exemptions first, sorted, then the block. An exemption without a valid
// port renders nothing.
func (s Spec) Rules(f Family) []string {
	dst := imdsAddr(f)
	var out []string
	for _, e := range s.Exempt {
		if !ValidPort(e.Port) {
			continue
		}
		for _, a := range ExemptAddrs(f, e.Addrs) {
			src := "-A " + Chain + " -s " + netip.PrefixFrom(a, a.BitLen()).String() + " -d " + dst
			out = append(out, src+" -m physdev --physdev-in "+e.Port+" -j ACCEPT", src+exemptMarkMatch+" -j ACCEPT")
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	return append(out, s.block(f, Chain, "")...)
}

// exemptMarkMatch is layer 1's ExemptMark as iptables -S prints it.
var exemptMarkMatch = fmt.Sprintf(" -m mark --mark %#x/%#x", ExemptMark, ExemptMark)

// block renders the drop or reject rules of chain, with an extra match
// ("-m cgroup --path ...") after the destination and protocol.
func (s Spec) block(f Family, chain, match string) []string {
	dst := imdsAddr(f)
	if match != "" {
		match = " " + match
	}
	if s.Action == ActionReject {
		unreach := "icmp-port-unreachable"
		if f == IPv6 {
			unreach = "icmp6-port-unreachable"
		}
		return []string{
			"-A " + chain + " -d " + dst + " -p tcp" + match + " -j REJECT --reject-with tcp-reset",
			"-A " + chain + " -d " + dst + match + " -j REJECT --reject-with " + unreach,
		}
	}
	return []string{"-A " + chain + " -d " + dst + match + " -j DROP"}
}

// ExemptAddrs returns the addresses of family f in addrs that may carry an
// exemption, sorted and without duplicates: never an unspecified,
// loopback or multicast address, which would not name one container.
func ExemptAddrs(f Family, addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || a.Is4() != (f == IPv4) || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.Zone() != "" {
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// HostRules renders the HostChain body: the block once per cgroup path,
// sorted. Paths that could not name one container (the root, or anything
// iptables would have to quote differently) are left out.
func (s Spec) HostRules(f Family) []string {
	if s.Host == nil {
		return nil
	}
	paths := slices.Clone(s.Host.Cgroups)
	slices.Sort(paths)
	var out []string
	for _, p := range slices.Compact(paths) {
		if !ValidCgroupPath(p) {
			continue
		}
		out = append(out, s.block(f, HostChain, `-m cgroup --path "`+p+`"`)...)
	}
	return out
}

// ValidCgroupPath accepts an absolute cgroup v2 path below the root made of
// the characters Docker, systemd and ECS use, so it renders and reads back
// unchanged.
func ValidCgroupPath(p string) bool {
	if len(p) < 2 || p[0] != '/' || strings.Contains(p, "//") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
		return false
	}
	for _, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-:@+=,~", r)
		if !ok {
			return false
		}
	}
	return true
}

// RestorePayload renders the iptables-restore --noflush input that rebuilds
// IMDS-GUARD. Only our own chain is declared: a ":CHAIN" line flushes that
// chain, and declaring DOCKER-USER would wipe the operator's rules.
func (s Spec) RestorePayload(f Family) []byte { return restorePayload(Chain, s.Rules(f)) }

// HostRestorePayload rebuilds HostChain. It is a separate transaction from
// IMDS-GUARD: a cgroup that vanished fails this one, never the main block.
func (s Spec) HostRestorePayload(f Family) []byte { return restorePayload(HostChain, s.HostRules(f)) }

func restorePayload(chain string, rules []string) []byte {
	var b strings.Builder
	b.WriteString("*" + Table + "\n")
	b.WriteString(":" + chain + " - [0:0]\n")
	for _, r := range rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// jumpRule is the normalized -S form of "-A <from> -j <to>".
func jumpRule(from, to string) string { return "-A " + from + " -j " + to }

// parseSave reads `iptables-save -c` output. Only the filter table's rules
// are compared with the spec; the evaluator reads every table. Rules come as
// "[pkts:bytes] -A CHAIN ...", which after the counters is the same
// normalized text that Spec.Rules renders.
func parseSave(out []byte) observed {
	var o observed
	table := Table // a dump of one table without its header is the filter table
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "*") {
			table = line[1:]
			continue
		}
		if table != Table {
			continue
		}
		if strings.HasPrefix(line, ":") {
			name, _, _ := strings.Cut(line[1:], " ")
			o.chains = append(o.chains, name)
			continue
		}
		var pkts, bytes uint64
		if strings.HasPrefix(line, "[") {
			ctr, rest, ok := strings.Cut(line, "] ")
			if !ok {
				continue
			}
			fmt.Sscanf(ctr, "[%d:%d", &pkts, &bytes)
			line = rest
		}
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		chain, _, _ := strings.Cut(line[len("-A "):], " ")
		switch chain {
		case Forward:
			o.forward = append(o.forward, line)
		case DockerUser:
			o.dockerUser = append(o.dockerUser, line)
		case Output:
			o.output = append(o.output, line)
		case Chain:
			o.guard = append(o.guard, line)
		case HostChain:
			o.host = append(o.host, line)
		}
		// Exemptions accept: only the block's counters are blocked traffic.
		if (chain == Chain || chain == HostChain) && target(line) != "ACCEPT" {
			o.packets += pkts
			o.bytes += bytes
			if o.counts == nil {
				o.counts = map[string][2]uint64{}
			}
			c := o.counts[chain]
			o.counts[chain] = [2]uint64{c[0] + pkts, c[1] + bytes}
		}
	}
	o.dockerUserExists = slices.Contains(o.chains, DockerUser)
	o.guardExists = slices.Contains(o.chains, Chain)
	o.hostExists = slices.Contains(o.chains, HostChain)
	return o
}

// target returns the -j or -g target of a normalized rule, or "".
func target(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}
