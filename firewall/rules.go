// Package firewall is the only code in imdsguard that speaks iptables.
//
// The agent owns one chain, IMDS-GUARD, in the filter table of iptables and
// ip6tables. Rule 1 of DOCKER-USER jumps to it, and FORWARD must reach
// DOCKER-USER before anything that could accept forwarded traffic. The chain
// body is rebuilt atomically with iptables-restore --noflush; the jumps are
// managed one rule at a time, because they live in chains imdsguard does not own.
package firewall

import (
	"fmt"
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
// jump rule in each is.
const (
	Table      = "filter"
	Chain      = "IMDS-GUARD"
	DockerUser = "DOCKER-USER"
	Forward    = "FORWARD"
)

// IMDS addresses, exactly one host each: 169.254.170.2 (ECS task
// credentials), .123 (time sync) and .253 (DNS) share the link-local range and
// must stay reachable.
const (
	IMDSv4 = "169.254.169.254/32"
	IMDSv6 = "fd00:ec2::254/128"
)

// Spec is the desired state of the owned chain.
type Spec struct {
	Action Action
}

// imdsAddr is the destination the family blocks.
func imdsAddr(f Family) string {
	if f == IPv6 {
		return IMDSv6
	}
	return IMDSv4
}

// Rules renders the IMDS-GUARD body for a family in the normalized form that
// `iptables -S` prints, so the live chain can be compared line by line.
func (s Spec) Rules(f Family) []string {
	dst := imdsAddr(f)
	if s.Action == ActionReject {
		unreach := "icmp-port-unreachable"
		if f == IPv6 {
			unreach = "icmp6-port-unreachable"
		}
		return []string{
			"-A " + Chain + " -d " + dst + " -p tcp -j REJECT --reject-with tcp-reset",
			"-A " + Chain + " -d " + dst + " -j REJECT --reject-with " + unreach,
		}
	}
	return []string{"-A " + Chain + " -d " + dst + " -j DROP"}
}

// RestorePayload renders the iptables-restore --noflush input that rebuilds
// IMDS-GUARD. Only our own chain is declared: a ":CHAIN" line flushes that
// chain, and declaring DOCKER-USER would wipe the operator's rules.
func (s Spec) RestorePayload(f Family) []byte {
	var b strings.Builder
	b.WriteString("*" + Table + "\n")
	b.WriteString(":" + Chain + " - [0:0]\n")
	for _, r := range s.Rules(f) {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// jumpRule is the normalized -S form of "-A <from> -j <to>".
func jumpRule(from, to string) string { return "-A " + from + " -j " + to }

// parseSave reads `iptables-save -c -t filter` output (one table). Rules
// come as "[pkts:bytes] -A CHAIN ...", which after the counters is the same
// normalized text that Spec.Rules renders.
func parseSave(out []byte) observed {
	var o observed
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
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
		case Chain:
			o.guard = append(o.guard, line)
			o.packets += pkts
			o.bytes += bytes
		}
	}
	o.dockerUserExists = slices.Contains(o.chains, DockerUser)
	o.guardExists = slices.Contains(o.chains, Chain)
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

// cannotAccept are targets after which a packet is either gone or continues
// down the same chain. Anything else — ACCEPT, RETURN (the policy may accept),
// a jump into another chain — could let a packet through before DOCKER-USER
// sees it.
var cannotAccept = map[string]bool{
	"": true, "DROP": true, "REJECT": true, "LOG": true, "NFLOG": true, "ULOG": true,
	"MARK": true, "CONNMARK": true, "TRACE": true, "AUDIT": true, "CT": true,
	"NOTRACK": true, "TCPMSS": true, "CLASSIFY": true, "DSCP": true, "TOS": true,
	"TTL": true, "HL": true, "SECMARK": true, "CONNSECMARK": true, DockerUser: true,
}
