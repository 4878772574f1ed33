// Package tasknet owns what imdsguard does inside other network namespaces
// over netlink: awsvpc tasks' IMDS blackhole routes and guard rules (read,
// judged by the kernel's own route lookups, added, watched), layer 1's
// table in a task namespace, and the bridge ports behind a container's
// addresses. It refuses the host's own namespace in every call, never
// touches the host's routes or firewall, and never calls Docker: callers
// pass namespace paths and pids.
package tasknet

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/imdsguard/imdsguard/firewall"
)

// ErrHostNamespace means a path led to the host's own network namespace,
// where a blackhole would cut the ECS agent (and the host) off IMDS.
var ErrHostNamespace = errors.New("refusing to act on the host's own network namespace")

// NSRoutes is what a namespace's routes say about IMDS.
type NSRoutes struct {
	V4Blackhole bool
	V6Blackhole bool
	// HasIPv6: the namespace has a global IPv6 address or an IPv6 route
	// other than link-local, loopback and our blackhole. Only then is the
	// IPv6 blackhole added: on a v4-only namespace it broke ECS task
	// networking (aws/amazon-vpc-cni-plugins#106).
	HasIPv6 bool
	// V4Guard, V6Guard: imdsguard's guard rule is the first policy rule.
	V4Guard, V6Guard bool
	// V4Escape, V6Escape say how a packet to IMDS would still leave (a
	// route lookup that honours the policy rules found a way, or a rule
	// matches on something a lookup cannot test); "" when the kernel
	// refuses every lookup.
	V4Escape, V6Escape string
}

// Blocked: the blackhole route and the guard rule are in place and no
// lookup escapes; enforce mode repairs anything less.
func (r NSRoutes) Blocked(f firewall.Family) bool {
	if f == firewall.IPv6 {
		return r.V6Blackhole && r.V6Guard && r.V6Escape == ""
	}
	return r.V4Blackhole && r.V4Guard && r.V4Escape == ""
}

// Escape is how a packet of family f to IMDS would leave ("" for none).
func (r NSRoutes) Escape(f firewall.Family) string {
	if f == firewall.IPv6 {
		return r.V6Escape
	}
	return r.V4Escape
}

// guardProtocol marks imdsguard's guard rule (FRA_PROTOCOL), as routing
// daemons mark theirs. A copy with another action is not the guard.
const guardProtocol = 73

// policyRule is one `ip rule` as the judgement needs it.
type policyRule struct {
	Pref     int
	Family   int
	Action   uint8 // FR_ACT_*
	Table    int
	Protocol uint8
	Src, Dst *net.IPNet
	// Selectors are the keys it matches on besides source and
	// destination (fwmark, tos, iif, ...), which a route lookup by
	// source and destination does not test.
	Selectors string
}

const (
	frActToTbl     = 1
	frActBlackhole = 6
)

func (r policyRule) isGuard() bool {
	return r.Protocol == guardProtocol && r.Action == frActBlackhole && r.Src == nil && r.Selectors == "" &&
		r.Dst != nil && (ipNetEqual(r.Dst, imdsNet4) || ipNetEqual(r.Dst, imdsNet6))
}

// isLocal: the kernel's "from all lookup local".
func (r policyRule) isLocal() bool {
	return r.Action == frActToTbl && r.Table == 255 && r.Src == nil && r.Dst == nil && r.Selectors == ""
}

func (r policyRule) isMain() bool {
	return r.Action == frActToTbl && r.Table == 254 && r.Src == nil && r.Dst == nil && r.Selectors == ""
}

func (r policyRule) String() string {
	s := fmt.Sprintf("%d: from %v to %v", r.Pref, nilAll(r.Src), nilAll(r.Dst))
	if r.Selectors != "" {
		s += " matching " + r.Selectors
	}
	switch r.Action {
	case frActToTbl:
		s += fmt.Sprintf(" lookup %d", r.Table)
	case frActBlackhole:
		s += " blackhole"
	default:
		s += fmt.Sprintf(" action %d", r.Action)
	}
	return s
}

func nilAll(n *net.IPNet) string {
	if n == nil {
		return "all"
	}
	return n.String()
}

func guardFirst(rules []policyRule) bool { return len(rules) > 0 && rules[0].isGuard() }

// familyPath is the kernel's answer for one family in one namespace.
type familyPath struct {
	Guard  bool
	Escape string
}

// judgePath decides whether a packet to IMDS is refused, from the route
// lookups' escapes (one per source tried), the policy rules in order, and
// the tos-specific routes that cover IMDS. With the guard first nothing
// else can matter. Without it, the lookups speak for every packet only if
// no rule the packet meets before its final lookup matches on a key the
// lookups did not vary (fwmark, uid, ports...) and no route is chosen by
// tos: those are reported as escapes, since unknown is not blocked. A
// lookup that leaves is an escape even with the guard first.
func judgePath(rules []policyRule, escapes []string, mainBlackhole bool, tos string) familyPath {
	p := familyPath{Guard: guardFirst(rules)}
	if len(escapes) > 0 {
		// Whatever the rules say: a lookup that leaves is never blocked.
		p.Escape = "a route lookup reaches IMDS: " + strings.Join(escapes, "; ")
		return p
	}
	if p.Guard {
		return p
	}
	for _, r := range rules {
		if r.isGuard() || (mainBlackhole && r.isMain()) {
			break
		}
		if r.Selectors != "" && r.Action != frActBlackhole {
			return familyPath{Escape: fmt.Sprintf("policy rule %q matches on %s, which no route lookup can rule out", r.String(), r.Selectors)}
		}
	}
	if tos != "" {
		return familyPath{Escape: tos}
	}
	return familyPath{}
}

// tosRoutes names a route chosen by tos that covers dst and sends: a
// lookup without tos never meets it.
func tosRoutes(routes []routeInfo, dst *net.IPNet) string {
	for _, r := range routes {
		if r.tos != 0 && !r.blackhole && (r.dst == nil || r.dst.Contains(dst.IP)) {
			return fmt.Sprintf("route to %v tos %#x in table %d reaches IMDS for packets with that tos, which no route lookup here tests", nilAll(r.dst), r.tos, r.table)
		}
	}
	return ""
}

type routeInfo struct {
	dst       *net.IPNet
	blackhole bool
	priority  int
	table     int
	tos       int
}

type addrInfo struct {
	ip     net.IP
	global bool
}

func ipNetEqual(a, b *net.IPNet) bool {
	if a == nil || b == nil {
		return a == b
	}
	ao, ab := a.Mask.Size()
	bo, bb := b.Mask.Size()
	return a.IP.Equal(b.IP) && ao == bo && ab == bb
}

// blackholed reports whether dst is blackholed in the main table: a
// blackhole for exactly dst, and no other route for dst with an equal or
// better metric (which would win).
func blackholed(routes []routeInfo, dst *net.IPNet) bool {
	best, other := -1, -1
	for _, r := range routes {
		if !ipNetEqual(r.dst, dst) {
			continue
		}
		if r.blackhole {
			if best < 0 || r.priority < best {
				best = r.priority
			}
		} else if other < 0 || r.priority < other {
			other = r.priority
		}
	}
	return best >= 0 && (other < 0 || best < other)
}

var (
	linkLocal6 = &net.IPNet{IP: net.ParseIP("fe80::"), Mask: net.CIDRMask(64, 128)}
	loopback6  = &net.IPNet{IP: net.IPv6loopback, Mask: net.CIDRMask(128, 128)}
)

func hasIPv6(routes []routeInfo, addrs []addrInfo) bool {
	for _, a := range addrs {
		if a.global && !a.ip.IsLoopback() && !a.ip.IsLinkLocalUnicast() {
			return true
		}
	}
	for _, r := range routes {
		if r.dst == nil { // a default route
			return true
		}
		if ipNetEqual(r.dst, linkLocal6) || ipNetEqual(r.dst, loopback6) || ipNetEqual(r.dst, imdsNet6) {
			continue
		}
		return true
	}
	return false
}

var (
	imdsNet4 = &net.IPNet{IP: net.ParseIP("169.254.169.254").To4(), Mask: net.CIDRMask(32, 32)}
	imdsNet6 = &net.IPNet{IP: net.ParseIP("fd00:ec2::254"), Mask: net.CIDRMask(128, 128)}
)

// NSPath is where a container's network namespace can be opened: Docker's
// SandboxKey bind mount, else the pid's. Host mode's key ends in "default"
// and names the host's namespace, so it is never used.
func NSPath(sandboxKey string, pid int) string {
	if sandboxKey != "" && !strings.HasSuffix(sandboxKey, "/default") {
		return sandboxKey
	}
	if pid > 0 {
		return PidPath(pid)
	}
	return ""
}

// PidPath is the network namespace of a process.
func PidPath(pid int) string { return fmt.Sprintf("/proc/%d/ns/net", pid) }
