package firewall

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Fake is an in-memory filter table for unit tests. It is stateful and strict
// the way the kernel is: a rule cannot jump to a missing chain, a chain that is
// jumped to cannot be deleted, and rule numbers must exist. Tests drift it with
// the same operations an operator would run.
type Fake struct {
	mu     sync.Mutex
	order  []string            // chain names, in creation order
	rules  map[string][]string // chain -> normalized rules ("-A CHAIN ...")
	counts map[string][2]uint64
	// Calls counts operations that change state, for idempotence checks.
	Calls int
	// FailRestore, when set, is returned by Restore.
	FailRestore error
	// BeforeRestore, when set, runs at the start of every Restore, as
	// another writer changing the table between our read and our write.
	BeforeRestore func(f *Fake)
}

var builtinChains = []string{"INPUT", Forward, "OUTPUT"}

// NewFake returns an empty filter table with the built-in chains.
func NewFake() *Fake {
	f := &Fake{rules: map[string][]string{}, counts: map[string][2]uint64{}}
	for _, c := range builtinChains {
		f.order = append(f.order, c)
		f.rules[c] = nil
	}
	return f
}

type fakeErr struct{ msg string }

func (e fakeErr) Error() string { return e.msg }

func (f *Fake) exists(chain string) bool { _, ok := f.rules[chain]; return ok }

// builtinTargets are the targets that name no chain.
var builtinTargets = map[string]bool{
	"ACCEPT": true, "RETURN": true, "DROP": true, "REJECT": true, "LOG": true, "NFLOG": true, "ULOG": true,
	"MARK": true, "CONNMARK": true, "TRACE": true, "AUDIT": true, "CT": true,
	"NOTRACK": true, "TCPMSS": true, "CLASSIFY": true, "DSCP": true, "TOS": true,
	"TTL": true, "HL": true, "SECMARK": true, "CONNSECMARK": true,
}

// checkTarget rejects a jump to a chain that does not exist.
func (f *Fake) checkTarget(rule string) error {
	t := target(rule)
	if t == "" || builtinTargets[t] {
		return nil // a built-in target, not a chain
	}
	if !f.exists(t) {
		return fakeErr{fmt.Sprintf("rule %q jumps to a non-existent chain", rule)}
	}
	return nil
}

// NewChain creates an empty chain; like iptables -N it fails if it exists.
func (f *Fake) NewChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exists(chain) {
		return fakeErr{"Chain already exists."}
	}
	f.Calls++
	f.order = append(f.order, chain)
	f.rules[chain] = nil
	return nil
}

func rule(chain string, spec []string) string {
	return strings.Join(append([]string{"-A", chain}, spec...), " ")
}

// Insert puts a rule at 1-based position pos.
func (f *Fake) Insert(table, chain string, pos int, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.insert(chain, pos, rule(chain, spec))
}

func (f *Fake) insert(chain string, pos int, r string) error {
	if !f.exists(chain) {
		return fakeErr{"No chain/target/match by that name."}
	}
	if pos < 1 || pos > len(f.rules[chain])+1 {
		return fakeErr{fmt.Sprintf("Index of insertion too big: %d", pos)}
	}
	if err := f.checkTarget(r); err != nil {
		return err
	}
	f.Calls++
	f.rules[chain] = slices.Insert(f.rules[chain], pos-1, r)
	return nil
}

// Append adds a rule at the end of chain.
func (f *Fake) Append(chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.insert(chain, len(f.rules[chain])+1, rule(chain, spec))
}

// DeleteById deletes rule number id (1-based).
func (f *Fake) DeleteById(table, chain string, id int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists(chain) || id < 1 || id > len(f.rules[chain]) {
		return fakeErr{"Index of deletion too big."}
	}
	f.Calls++
	f.rules[chain] = slices.Delete(f.rules[chain], id-1, id)
	return nil
}

// deleteFirst deletes the first copy of rule from chain (iptables -D by
// spec), if there is one.
func (f *Fake) deleteFirst(chain, rule string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i := slices.Index(f.rules[chain], rule); i >= 0 {
		f.rules[chain] = slices.Delete(f.rules[chain], i, i+1)
	}
}

// deleteAll deletes every copy of rule from chain.
func (f *Fake) deleteAll(chain, rule string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if rs, ok := f.rules[chain]; ok {
		f.rules[chain] = slices.DeleteFunc(rs, func(r string) bool { return r == rule })
	}
}

// Flush empties a chain (iptables -F CHAIN).
func (f *Fake) Flush(chain string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exists(chain) {
		f.rules[chain] = nil
	}
}

// referenced reports whether any rule jumps to chain.
func (f *Fake) referenced(chain string) bool {
	for _, rs := range f.rules {
		for _, r := range rs {
			if target(r) == chain {
				return true
			}
		}
	}
	return false
}

// DeleteChain removes an empty, unreferenced user chain (iptables -X CHAIN).
func (f *Fake) DeleteChain(chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !f.exists(chain) || slices.Contains(builtinChains, chain):
		return fakeErr{"No chain/target/match by that name."}
	case len(f.rules[chain]) > 0 || f.referenced(chain):
		return fakeErr{"Too many links."}
	}
	f.Calls++
	delete(f.rules, chain)
	f.order = slices.DeleteFunc(f.order, func(c string) bool { return c == chain })
	return nil
}

// ClearAndDeleteChain flushes and deletes a chain if it exists.
func (f *Fake) ClearAndDeleteChain(table, chain string) error {
	f.mu.Lock()
	exists := f.exists(chain)
	f.mu.Unlock()
	if !exists {
		return nil
	}
	f.Flush(chain)
	return f.DeleteChain(chain)
}

// Reset drops every user chain and rule, like `iptables -F; iptables -X` or
// a restore of a ruleset that knows nothing of ours.
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.order, f.rules, f.counts = nil, map[string][]string{}, map[string][2]uint64{}
	for _, c := range builtinChains {
		f.order = append(f.order, c)
		f.rules[c] = nil
	}
}

// SetCounters sets the counters of rule number id of chain.
func (f *Fake) SetCounters(chain string, id int, pkts, bytes uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[fmt.Sprintf("%s/%d", chain, id)] = [2]uint64{pkts, bytes}
}

// Save renders the table like iptables-save -c.
func (f *Fake) Save(table string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, c := range f.order {
		policy := "-"
		if slices.Contains(builtinChains, c) {
			policy = "ACCEPT"
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", c, policy)
	}
	for _, c := range f.order {
		for i, r := range f.rules[c] {
			n := f.counts[fmt.Sprintf("%s/%d", c, i+1)]
			fmt.Fprintf(&b, "[%d:%d] %s\n", n[0], n[1], r)
		}
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String()), nil
}

// Restore applies iptables-restore --noflush input: a ":CHAIN" line creates
// or flushes that chain, "-A" lines append. Like the kernel it applies all or
// nothing.
func (f *Fake) Restore(payload []byte) error {
	if f.BeforeRestore != nil {
		f.BeforeRestore(f)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailRestore != nil {
		return f.FailRestore
	}
	next := &Fake{order: slices.Clone(f.order), rules: map[string][]string{}, counts: maps.Clone(f.counts)}
	for c, rs := range f.rules {
		next.rules[c] = slices.Clone(rs)
	}
	for _, line := range strings.Split(string(payload), "\n") {
		switch {
		case line == "" || line == "*filter" || line == "COMMIT":
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if !next.exists(name) {
				next.order = append(next.order, name)
			}
			next.rules[name] = nil
			maps.DeleteFunc(next.counts, func(k string, _ [2]uint64) bool { return strings.HasPrefix(k, name+"/") })
		case strings.HasPrefix(line, "-A "):
			chain, _, _ := strings.Cut(line[3:], " ")
			if err := next.insert(chain, len(next.rules[chain])+1, line); err != nil {
				return fmt.Errorf("restore line %q: %w", line, err)
			}
		case strings.HasPrefix(line, "-I "):
			// "-I CHAIN POS spec…", as the manager writes it.
			f := strings.Fields(line[3:])
			var pos int
			if len(f) < 2 {
				return fakeErr{fmt.Sprintf("restore: bad line %q", line)}
			}
			if _, err := fmt.Sscan(f[1], &pos); err != nil {
				return fakeErr{fmt.Sprintf("restore: bad position in %q", line)}
			}
			if err := next.insert(f[0], pos, rule(f[0], f[2:])); err != nil {
				return fmt.Errorf("restore line %q: %w", line, err)
			}
		case strings.HasPrefix(line, "-D "):
			// Delete by spec: the first rule that matches, as iptables -D.
			f := strings.Fields(line[3:])
			if len(f) < 1 {
				return fakeErr{fmt.Sprintf("restore: bad line %q", line)}
			}
			i := slices.Index(next.rules[f[0]], rule(f[0], f[1:]))
			if i < 0 {
				return fakeErr{fmt.Sprintf("restore line %q: Bad rule (does a matching rule exist in that chain?)", line)}
			}
			next.rules[f[0]] = slices.Delete(next.rules[f[0]], i, i+1)
		default:
			return fakeErr{fmt.Sprintf("restore: unsupported line %q", line)}
		}
	}
	f.order, f.rules, f.counts = next.order, next.rules, next.counts
	f.Calls++
	return nil
}

// Dump returns every user-visible rule, in chain order, for whole-ruleset
// assertions.
func (f *Fake) Dump() string {
	out, _ := f.Save(Table)
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "[") {
			_, l, _ = strings.Cut(l, "] ")
		}
		if l != "" && l != "*filter" && l != "COMMIT" {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
