package firewall

import (
	"strconv"
	"strings"
)

// Blocked attempts are handed to imdsguard over NFLOG (nfnetlink_log): each
// blocking rule of layer 1 is preceded by a rule that matches the same
// packets, passes at most NFLogRate of them a second (burst NFLogBurst) to
// group NFLogGroup with the first NFLogSnaplen bytes, and lets them go on to
// the drop. The limit lives in a rule of its own because a limit that is
// over breaks its rule: in the drop rule it would let the packet through.
//
// The rule's prefix says which rule it was, so the reader can attribute
// the packet without guessing: the bridge chain (the frame's bridge port
// is in the message), the forward chain, a host-network container's cgroup
// rule (its cgroup id in the prefix: NFLOG carries a socket's uid and gid,
// never its cgroup), or an awsvpc task's own table (whose namespace the
// reading socket is in).
const (
	NFLogGroup   = 169
	NFLogSnaplen = 128
	NFLogRate    = 100
	NFLogBurst   = 200
)

// Where is the rule an attempt was logged by.
type Where string

const (
	WhereBridge  Where = "bridge"  // bridge imdsguard prerouting: by bridge port
	WhereForward Where = "forward" // inet imdsguard forward: routed
	WhereCgroup  Where = "cgroup"  // inet imdsguard output: a host-network container's cgroup
	WhereTask    Where = "task"    // an awsvpc task's own table
)

const nflogPrefix = "imdsguard "

// NFLogPrefix is the log prefix of the rule at w; cgroup is the cgroup v2
// id of a host-network container's rule.
func NFLogPrefix(w Where, cgroup uint64) string {
	if w == WhereCgroup {
		return nflogPrefix + string(w) + " " + strconv.FormatUint(cgroup, 10)
	}
	return nflogPrefix + string(w)
}

// ParseNFLogPrefix reads a prefix NFLogPrefix wrote; ok is false for
// anybody else's.
func ParseNFLogPrefix(p string) (w Where, cgroup uint64, ok bool) {
	rest, found := strings.CutPrefix(p, nflogPrefix)
	if !found {
		return "", 0, false
	}
	name, id, hasID := strings.Cut(rest, " ")
	switch Where(name) {
	case WhereBridge, WhereForward, WhereTask:
		return Where(name), 0, !hasID
	case WhereCgroup:
		n, err := strconv.ParseUint(id, 10, 64)
		return WhereCgroup, n, hasID && err == nil
	}
	return "", 0, false
}
