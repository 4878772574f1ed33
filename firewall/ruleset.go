package firewall

import (
	"fmt"
	"strconv"
	"strings"
)

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
