package firewall

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The evaluator answers one question: would the kernel drop the first packet
// (conntrack NEW) of a TCP connection from this container to IMDS port 80?
// It walks the parsed iptables-save text the way netfilter does, table by
// table and rule by rule, instead of comparing rule text with what the
// command would have written: a daemon running with --action reject, an
// exemption, an operator's ACCEPT ahead of the jump, all are judged by what
// they do to the packet.
//
// Whatever it does not understand is read against the verdict: a rule that
// might match and might let the packet through (ACCEPT, RETURN, a jump, an
// unknown target) is assumed to match; a DROP that might match is assumed
// not to. So it can call a packet dropped only when every path through the
// ruleset drops it.

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

// Ruleset is one family's iptables, parsed from iptables-save (any number of
// tables).
type Ruleset struct {
	Family Family
	// BridgeNF is what the host's bridge netfilter sysctl said when the
	// ruleset was read; a packet's own BridgeNF, when known, wins.
	BridgeNF Tri
	tables   map[string]*ruleTable
}

type ruleTable struct {
	chains map[string]*ruleChain
}

type ruleChain struct {
	policy string // "ACCEPT", "DROP", or "-" for user chains
	rules  []parsedRule
}

type parsedRule struct {
	text   string
	conds  []cond
	target string
	goTo   bool
}

// cond is one match option, with its negation.
type cond struct {
	opt  string
	neg  bool
	args []string
}

// ParseRuleset reads iptables-save output. Counters ("[p:b]") are ignored.
func ParseRuleset(f Family, save []byte) (*Ruleset, error) {
	rs := &Ruleset{Family: f, tables: map[string]*ruleTable{}}
	var cur *ruleTable
	for n, line := range strings.Split(string(save), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			if _, rest, ok := strings.Cut(line, "] "); ok {
				line = rest
			}
		}
		switch {
		case line == "" || line[0] == '#' || line == "COMMIT":
		case line[0] == '*':
			cur = &ruleTable{chains: map[string]*ruleChain{}}
			rs.tables[line[1:]] = cur
		case cur == nil:
			return nil, fmt.Errorf("line %d: %q outside a table", n+1, line)
		case line[0] == ':':
			fields := strings.Fields(line[1:])
			c := &ruleChain{policy: "-"}
			if len(fields) > 1 {
				c.policy = fields[1]
			}
			cur.chains[fields[0]] = c
		case strings.HasPrefix(line, "-A "):
			toks, err := tokenize(line)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n+1, err)
			}
			if len(toks) < 2 {
				return nil, fmt.Errorf("line %d: %q names no chain", n+1, line)
			}
			c := cur.chains[toks[1]]
			if c == nil {
				c = &ruleChain{policy: "-"}
				cur.chains[toks[1]] = c
			}
			c.rules = append(c.rules, parseRule(line, toks[2:]))
		}
	}
	return rs, nil
}

// tokenize splits a rule as iptables-save quotes it: double quotes around
// arguments with spaces, backslash escapes inside them.
func tokenize(line string) ([]string, error) {
	var out []string
	var b strings.Builder
	in, quoted := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quoted && ch == '\\' && i+1 < len(line):
			i++
			b.WriteByte(line[i])
		case ch == '"':
			quoted = !quoted
			in = true
		case !quoted && (ch == ' ' || ch == '\t'):
			if in {
				out = append(out, b.String())
				b.Reset()
				in = false
			}
		default:
			b.WriteByte(ch)
			in = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if in {
		out = append(out, b.String())
	}
	return out, nil
}

// flagOptions take no argument.
var flagOptions = map[string]bool{
	"-f": true, "--fragment": true, "--syn": true, "--physdev-is-in": true, "--physdev-is-out": true,
	"--physdev-is-bridged": true, "--limit-iface-in": true, "--limit-iface-out": true, "-4": true, "-6": true,
}

func parseRule(text string, toks []string) parsedRule {
	r := parsedRule{text: text}
	neg := false
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t == "!":
			neg = true
			continue
		case t == "-j" || t == "--jump" || t == "-g" || t == "--goto":
			if i+1 < len(toks) {
				r.target, r.goTo = toks[i+1], t == "-g" || t == "--goto"
			}
			return r // the rest are the target's options
		case t == "-m" || t == "--match":
			i++ // the module's options follow as their own conds
		case strings.HasPrefix(t, "-"):
			c := cond{opt: t, neg: neg}
			if !flagOptions[t] {
				for i+1 < len(toks) && (!strings.HasPrefix(toks[i+1], "-") || isNumberish(toks[i+1])) && toks[i+1] != "!" {
					i++
					c.args = append(c.args, toks[i])
				}
			}
			r.conds = append(r.conds, c)
		}
		neg = false
	}
	return r
}

// isNumberish keeps "-1"-like arguments with their option.
func isNumberish(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}

// Evaluate walks the ruleset for p and returns the iptables layer's result.
func (rs *Ruleset) Evaluate(p Packet) LayerResult {
	res := LayerResult{Layer: "iptables"}
	hook := "FORWARD"
	pre := "PREROUTING"
	if p.Host {
		hook, pre = "OUTPUT", "OUTPUT"
	}
	// The explanation for a pass is the last table's: raw and mangle
	// pass nearly everything, the filter table is where a block lives.
	var lastPass *LayerResult
	for _, step := range []struct{ table, chain string }{
		{"raw", pre}, {"mangle", pre}, {"mangle", hook}, {"filter", hook},
	} {
		if step.table == "mangle" && step.chain == pre && p.Host {
			continue // mangle OUTPUT once
		}
		t := rs.tables[step.table]
		if t == nil || t.chains[step.chain] == nil {
			continue
		}
		e := evaluation{p: p, bridgeNF: p.BridgeNF, t: t, table: step.table, memo: map[string]outcome{}}
		if e.bridgeNF == Maybe {
			e.bridgeNF = rs.BridgeNF
		}
		o := e.chain(step.chain, 0)
		c := t.chains[step.chain]
		if o.set&pReturn != 0 {
			// Falling off a built-in chain applies its policy.
			if c.policy == "DROP" {
				o.set = o.set&^pReturn | pDrop
				if o.drop == nil {
					o.drop = &witness{step.table, step.chain, "policy DROP"}
				}
			} else {
				o.set = o.set&^pReturn | pAccept
				if o.pass == nil {
					o.pass = &witness{step.table, step.chain, "policy " + c.policy}
				}
			}
		}
		if o.set == pDrop {
			w := o.drop
			return LayerResult{Layer: res.Layer, Dropped: true, Table: w.table, Chain: w.chain, Rule: w.rule}
		}
		if o.pass != nil {
			lastPass = &LayerResult{Layer: res.Layer, Table: o.pass.table, Chain: o.pass.chain, Rule: o.pass.rule}
		}
	}
	if lastPass != nil {
		return *lastPass
	}
	return res
}

// Possible outcomes of walking a chain.
const (
	pDrop = 1 << iota
	pAccept
	pReturn // fell off the end or RETURN: the caller continues
)

type witness struct{ table, chain, rule string }

// outcome is the set of things that may happen from a point in a chain,
// with the first rule that may let the packet through and the one that
// drops it.
type outcome struct {
	set        int
	pass, drop *witness
}

func (o outcome) union(u outcome) outcome {
	o.set |= u.set
	if o.pass == nil {
		o.pass = u.pass
	}
	if o.drop == nil {
		o.drop = u.drop
	}
	return o
}

type evaluation struct {
	p        Packet
	bridgeNF Tri
	t        *ruleTable
	table    string
	memo     map[string]outcome
}

// nonTerminal targets do something to the packet (or log it) and let it
// continue down the chain.
var nonTerminal = map[string]bool{
	"LOG": true, "NFLOG": true, "ULOG": true, "MARK": true, "CONNMARK": true, "TRACE": true, "AUDIT": true,
	"CT": true, "NOTRACK": true, "TCPMSS": true, "CLASSIFY": true, "DSCP": true, "TOS": true, "TTL": true,
	"HL": true, "SECMARK": true, "CONNSECMARK": true, "CHECKSUM": true, "IDLETIMER": true, "LED": true,
	"RATEEST": true, "SET": true, "TEE": true, "HMARK": true, "": true,
}

// chain returns what may happen to the packet entering chain at depth.
func (e *evaluation) chain(name string, depth int) outcome {
	if o, ok := e.memo[name]; ok {
		return o
	}
	c := e.t.chains[name]
	if c == nil || depth > 64 {
		// A jump to nothing we can read: anything may happen.
		return outcome{set: pAccept | pReturn, pass: &witness{e.table, name, "unreadable chain"}}
	}
	// From the end backwards: next is what happens after rule i.
	next := outcome{set: pReturn}
	for i := len(c.rules) - 1; i >= 0; i-- {
		r := c.rules[i]
		m := e.match(r)
		if m == No {
			continue
		}
		here := witness{e.table, name, r.text}
		var act outcome
		switch t := r.target; {
		case t == "ACCEPT":
			act = outcome{set: pAccept, pass: &here}
		case t == "DROP" || t == "REJECT":
			act = outcome{set: pDrop, drop: &here}
		case t == "RETURN":
			act = outcome{set: pReturn, pass: &here}
		case e.t.chains[t] != nil:
			sub := e.chain(t, depth+1)
			if r.goTo {
				// A goto returns to our caller: same as this chain's end.
				act = sub
			} else if sub.set&pReturn != 0 {
				act = outcome{set: sub.set &^ pReturn, pass: sub.pass, drop: sub.drop}.union(next)
			} else {
				act = sub
			}
		case nonTerminal[t]:
			act = next
		default:
			// NFQUEUE and targets we do not know may accept.
			act = outcome{set: pAccept, pass: &here}.union(next)
		}
		if m == Maybe {
			// Both paths are possible; a witness for passing is this
			// rule if it may pass, else what follows.
			act = act.union(next)
		}
		next = act
	}
	e.memo[name] = next
	return next
}

// match evaluates all conds of r.
func (e *evaluation) match(r parsedRule) Tri {
	res := Yes
	for _, c := range r.conds {
		v := e.cond(c)
		if v == No {
			return No
		}
		res = res.and(v)
	}
	return res
}

func (e *evaluation) cond(c cond) Tri {
	p := e.p
	arg := ""
	if len(c.args) > 0 {
		arg = c.args[0]
	}
	var v Tri
	switch c.opt {
	case "-s", "--source":
		v = matchAddr(p.Src, arg, p.Anonymous, p.Host)
	case "-d", "--destination":
		v = matchAddr(imdsIP(p.Family), arg, false, false)
	case "-p", "--protocol":
		v = matchProto(arg)
	case "-i", "--in-interface":
		if p.Host {
			v = No // OUTPUT has no input interface; iptables rejects -i there
		} else {
			v = matchIface(p.InIface, arg)
		}
	case "-o", "--out-interface":
		v = Maybe // the uplink: routing decides
	case "--dport", "--destination-port":
		v = matchPorts(arg)
	case "--dports", "--destination-ports":
		v = matchPorts(arg)
	case "--ports":
		if matchPorts(arg) == Yes {
			v = Yes
		} else {
			v = Maybe // the source port is ephemeral
		}
	case "--syn":
		v = Yes
	case "--tcp-flags":
		v = matchTCPFlags(c.args)
	case "-f", "--fragment":
		v = No // the first packet is never a second fragment
	case "--ctstate", "--state":
		v = matchState(arg)
	case "--dst-type":
		v = matchAddrType(arg, false)
	case "--src-type":
		if p.Host {
			v = matchAddrType(arg, true)
		} else {
			v = matchAddrType(arg, false)
		}
	case "--comment":
		v = Yes
	case "--physdev-in":
		return e.physdev(c, matchName(p.BridgePort, arg, p.Anonymous))
	case "--physdev-is-in":
		return e.physdev(c, Yes)
	case "--physdev-is-bridged":
		return e.physdev(c, No) // routed to IMDS, not bridged
	case "--physdev-out", "--physdev-is-out":
		return e.physdev(c, Maybe)
	case "--path":
		// xt_cgroup: no socket (a forwarded packet) never matches, inverted
		// or not.
		if !p.Host {
			return No
		}
		v = matchCgroup(p.Cgroup, arg, p.Anonymous)
	default:
		return Maybe
	}
	if c.neg {
		return v.not()
	}
	return v
}

// physdev follows xt_physdev: without bridge netfilter information a
// non-inverted option never matches and an inverted one always does.
func (e *evaluation) physdev(c cond, v Tri) Tri {
	off := triOf(c.neg)
	if e.p.Host {
		return off
	}
	on := v
	if c.neg {
		on = v.not()
	}
	switch e.bridgeNF {
	case No:
		return off
	case Yes:
		return on
	}
	if on == off {
		return on // a port name that does not match, either way
	}
	return Maybe
}

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
