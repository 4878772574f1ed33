package firewall

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

func imdsIP(f Family) netip.Addr {
	return netip.MustParsePrefix(imdsAddr(f)).Addr()
}

func matchAddr(a netip.Addr, arg string, anonymous, local bool) Tri {
	pfx, err := netip.ParsePrefix(arg)
	if err != nil {
		addr, err2 := netip.ParseAddr(arg)
		if err2 != nil {
			return Maybe // a hostname or a mask form we do not parse
		}
		pfx = netip.PrefixFrom(addr, addr.BitLen())
	}
	if pfx.Bits() == 0 {
		return Yes
	}
	switch {
	case a.IsValid():
		return triOf(pfx.Contains(a))
	case anonymous && !local && pfx.IsSingleIP():
		return No
	}
	return Maybe
}

func matchProto(arg string) Tri {
	switch strings.ToLower(arg) {
	case "tcp", "6", "all", "0":
		return Yes
	case "":
		return Maybe
	}
	return No
}

// matchIface follows iptables: a trailing "+" is a prefix match.
func matchIface(have, pattern string) Tri {
	if have == "" {
		return Maybe
	}
	if p, ok := strings.CutSuffix(pattern, "+"); ok {
		return triOf(strings.HasPrefix(have, p))
	}
	return triOf(have == pattern)
}

// matchName is matchIface for a field that may be anonymous.
func matchName(have, pattern string, anonymous bool) Tri {
	if have == "" && anonymous && !strings.HasSuffix(pattern, "+") {
		return No
	}
	return matchIface(have, pattern)
}

func matchCgroup(have, path string, anonymous bool) Tri {
	switch {
	case have != "":
		return triOf(have == path || strings.HasPrefix(have, strings.TrimSuffix(path, "/")+"/") || path == "/")
	case anonymous && path != "/":
		return No
	}
	return Maybe
}

// matchPorts reads "80", "1:1024", "80,443,8000:9000".
func matchPorts(arg string) Tri {
	if arg == "" {
		return Maybe
	}
	for _, part := range strings.Split(arg, ",") {
		lo, hi, isRange := strings.Cut(part, ":")
		if !isRange {
			hi = lo
		}
		if lo == "" {
			lo = "0"
		}
		if hi == "" {
			hi = "65535"
		}
		l, err1 := strconv.Atoi(lo)
		h, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil {
			return Maybe // a service name
		}
		if l <= 80 && 80 <= h {
			return Yes
		}
	}
	return No
}

// matchTCPFlags: the first packet carries SYN alone.
func matchTCPFlags(args []string) Tri {
	if len(args) != 2 {
		return Maybe
	}
	has := func(list, flag string) bool {
		for _, f := range strings.Split(list, ",") {
			if f == flag || f == "ALL" {
				return true
			}
		}
		return false
	}
	for _, f := range []string{"SYN", "ACK", "FIN", "RST", "URG", "PSH"} {
		if has(args[0], f) && has(args[1], f) != (f == "SYN") {
			return No
		}
	}
	return Yes
}

// matchState: the first packet of a connection is NEW. UNTRACKED and
// INVALID depend on other rules and the conntrack table.
func matchState(arg string) Tri {
	v := No
	for _, s := range strings.Split(arg, ",") {
		switch strings.ToUpper(s) {
		case "NEW":
			return Yes
		case "UNTRACKED", "INVALID":
			v = Maybe
		}
	}
	return v
}

// matchAddrType: IMDS and a container's address are unicast, a host
// process's source address is local.
func matchAddrType(arg string, local bool) Tri {
	v := No
	for _, t := range strings.Split(arg, ",") {
		switch strings.ToUpper(t) {
		case "UNICAST":
			if !local {
				return Yes
			}
		case "LOCAL":
			if local {
				return Yes
			}
		case "BROADCAST", "MULTICAST", "ANYCAST":
		default:
			v = Maybe // blackhole, unreachable, … depend on routes
		}
	}
	return v
}

// ReadBridgeNF reads whether bridge netfilter passes bridged packets of
// family f through iptables in this network namespace (per namespace since
// Linux 5.3). No file: br_netfilter is not loaded, so no packet carries a
// bridge port. A read error is unknown.
func ReadBridgeNF(f Family) Tri {
	name := "/proc/sys/net/bridge/bridge-nf-call-iptables"
	if f == IPv6 {
		name = "/proc/sys/net/bridge/bridge-nf-call-ip6tables"
	}
	b, err := os.ReadFile(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return No
	case err != nil:
		return Maybe
	}
	return triOf(strings.TrimSpace(string(b)) == "1")
}
