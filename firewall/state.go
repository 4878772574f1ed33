package firewall

import (
	"fmt"
	"slices"
)

// Reason names one way the live firewall can differ from the desired state.
// Reasons are metric label values: keep them stable.
type Reason string

const (
	ReasonChainMissing  Reason = "chain_missing"
	ReasonChainModified Reason = "chain_modified"
	// The jump to IMDS-GUARD in DOCKER-USER, checked only while DOCKER-USER
	// exists (Docker creates it; imdsguard never does).
	ReasonJumpMissing   Reason = "jump_missing"
	ReasonJumpNotFirst  Reason = "jump_not_first"
	ReasonJumpDuplicate Reason = "jump_duplicate"
	// imdsguard's own jump to IMDS-GUARD in FORWARD, the one that blocks
	// whatever Docker does. Docker inserting its "-j DOCKER-USER" at rule 1
	// makes ours rule 2: not first, moved back.
	ReasonForwardJumpMissing   Reason = "forward_jump_missing"
	ReasonForwardJumpNotFirst  Reason = "forward_jump_not_first"
	ReasonForwardJumpDuplicate Reason = "forward_jump_duplicate"
	// Host-network blocking (only with Spec.Host).
	ReasonHostChainMissing    Reason = "host_chain_missing"
	ReasonHostChainModified   Reason = "host_chain_modified"
	ReasonOutputJumpMissing   Reason = "output_jump_missing"
	ReasonOutputJumpNotFirst  Reason = "output_jump_not_first"
	ReasonOutputJumpDuplicate Reason = "output_jump_duplicate"
	// ReasonNotDropped: the evaluator found a path by which a container's
	// packet reaches IMDS (Check only; Ensure's problems say what to fix).
	ReasonNotDropped Reason = "not_dropped"
)

// Reasons lists every Reason, so metrics can start each series at zero.
var Reasons = []Reason{
	ReasonChainMissing, ReasonChainModified, ReasonJumpMissing, ReasonJumpNotFirst, ReasonJumpDuplicate,
	ReasonForwardJumpMissing, ReasonForwardJumpNotFirst, ReasonForwardJumpDuplicate,
	ReasonHostChainMissing, ReasonHostChainModified, ReasonOutputJumpMissing, ReasonOutputJumpNotFirst,
	ReasonOutputJumpDuplicate,
}

// Problem is one deviation found in a family's ruleset.
type Problem struct {
	Family Family `json:"family"`
	Reason Reason `json:"reason"`
	Detail string `json:"detail"`
}

func (p Problem) String() string { return fmt.Sprintf("%s: %s", p.Family, p.Detail) }

// observed is what one read of a family's filter table found.
type observed struct {
	chains           []string // every chain in the table
	forward          []string // FORWARD rules, in order
	dockerUserExists bool
	dockerUser       []string // DOCKER-USER rules, in order
	guardExists      bool
	guard            []string // IMDS-GUARD rules, without counters
	output           []string // OUTPUT rules, in order
	hostExists       bool
	host             []string             // IMDS-GUARD-HOST rules
	packets, bytes   uint64               // summed over the blocking rules of both chains
	rules            *Ruleset             // every table, for the evaluator
	counts           map[string][2]uint64 // packets, bytes blocked, per owned chain
}

// indices returns the positions (0-based) of rule in rules.
func indices(rules []string, rule string) []int {
	var out []int
	for i, r := range rules {
		if r == rule {
			out = append(out, i)
		}
	}
	return out
}

// problems compares one observation with the spec. It is pure so every
// combination of drift can be table-tested.
func (o observed) problems(f Family, spec Spec) []Problem {
	var ps []Problem
	add := func(r Reason, format string, a ...any) {
		ps = append(ps, Problem{Family: f, Reason: r, Detail: fmt.Sprintf(format, a...)})
	}
	// body compares an owned chain with what it must hold.
	body := func(chain string, exists bool, got, want []string, missing, modified Reason) {
		switch {
		case !exists:
			add(missing, "chain %s is missing", chain)
		case !slices.Equal(got, want):
			add(modified, "chain %s holds %q, want %q", chain, got, want)
		}
	}
	// firstJump checks that rule 1 of from, and no other, jumps to to.
	firstJump := func(rules []string, from, to string, missing, notFirst, dup Reason) {
		switch idx := indices(rules, jumpRule(from, to)); {
		case len(idx) == 0:
			add(missing, "%s does not jump to %s", from, to)
		case idx[0] != 0:
			add(notFirst, "the jump to %s is rule %d of %s, not rule 1", to, idx[0]+1, from)
		case len(idx) > 1:
			add(dup, "%s jumps to %s %d times", from, to, len(idx))
		}
	}
	body(Chain, o.guardExists, o.guard, spec.Rules(f), ReasonChainMissing, ReasonChainModified)
	firstJump(o.forward, Forward, Chain, ReasonForwardJumpMissing, ReasonForwardJumpNotFirst, ReasonForwardJumpDuplicate)
	// A missing DOCKER-USER is Docker's to create: FORWARD's jump blocks
	// without it, and the sync after Docker creates it adds ours.
	if o.dockerUserExists {
		firstJump(o.dockerUser, DockerUser, Chain, ReasonJumpMissing, ReasonJumpNotFirst, ReasonJumpDuplicate)
	}
	if spec.Host != nil {
		body(HostChain, o.hostExists, o.host, spec.HostRules(f), ReasonHostChainMissing, ReasonHostChainModified)
		firstJump(o.output, Output, HostChain, ReasonOutputJumpMissing, ReasonOutputJumpNotFirst, ReasonOutputJumpDuplicate)
	}
	return ps
}

// Fix says what Ensure does about a problem, for the repair log line.
func (r Reason) Fix() string {
	switch r {
	case ReasonChainMissing, ReasonChainModified:
		return "rebuilt " + Chain + " with iptables-restore"
	case ReasonJumpMissing, ReasonJumpNotFirst:
		return "inserted the jump to " + Chain + " as rule 1 of " + DockerUser
	case ReasonJumpDuplicate:
		return "deleted the extra jumps"
	case ReasonForwardJumpMissing, ReasonForwardJumpNotFirst:
		return "inserted the jump to " + Chain + " as rule 1 of " + Forward
	case ReasonForwardJumpDuplicate:
		return "kept one jump to " + Chain + ", as rule 1 of " + Forward
	case ReasonHostChainMissing, ReasonHostChainModified:
		return "rebuilt " + HostChain + " with iptables-restore"
	case ReasonOutputJumpMissing, ReasonOutputJumpNotFirst:
		return "inserted the jump to " + HostChain + " as rule 1 of " + Output
	case ReasonOutputJumpDuplicate:
		return "deleted the extra jumps"
	}
	return "repaired"
}
