package firewall

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
	case "--mark":
		// Layer 1's bridge chain sets ExemptMark on an exempt port's
		// frames; layer 2's rules alone cannot tell whether it did.
		v = Maybe
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
