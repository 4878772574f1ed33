package firewall

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// maxJumpRetries bounds the convergence of jump fixes within one Ensure.
const maxJumpRetries = 3

var jumpReasons = map[Reason]bool{
	ReasonJumpMissing: true, ReasonJumpNotFirst: true, ReasonJumpDuplicate: true,
	ReasonForwardJumpMissing: true, ReasonForwardJumpLate: true, ReasonForwardJumpDuplicate: true,
	ReasonOutputJumpMissing: true, ReasonOutputJumpNotFirst: true, ReasonOutputJumpDuplicate: true,
}

// onlyJumps returns the reasons of ps when there are some and all are about
// jumps.
func onlyJumps(ps []Problem) (map[Reason]bool, bool) {
	rs := make(map[Reason]bool, len(ps))
	for _, p := range ps {
		if !jumpReasons[p.Reason] {
			return nil, false
		}
		rs[p.Reason] = true
	}
	return rs, len(rs) > 0
}

// fixJumps fixes the jumps reasons name, given the read o.
func fixJumps(t Tables, o observed, reasons map[Reason]bool) []error {
	var errs []error
	if reasons[ReasonJumpMissing] || reasons[ReasonJumpNotFirst] || reasons[ReasonJumpDuplicate] {
		if err := fixFirstJump(t, DockerUser, Chain, len(indices(o.dockerUser, jumpRule(DockerUser, Chain)))); err != nil {
			errs = append(errs, err)
		}
	}
	if reasons[ReasonForwardJumpMissing] || reasons[ReasonForwardJumpLate] || reasons[ReasonForwardJumpDuplicate] {
		// Docker deletes and re-inserts this same rule at the top of FORWARD
		// on every start, so doing the same never fights Docker.
		if err := fixFirstJump(t, Forward, DockerUser, len(indices(o.forward, jumpRule(Forward, DockerUser)))); err != nil {
			errs = append(errs, err)
		}
	}
	if reasons[ReasonOutputJumpMissing] || reasons[ReasonOutputJumpNotFirst] || reasons[ReasonOutputJumpDuplicate] {
		// After a failed rebuild the chain may not exist; the insert then
		// fails and is reported, and nothing that exists is removed.
		if err := fixFirstJump(t, Output, HostChain, len(indices(o.output, jumpRule(Output, HostChain)))); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// chainExists re-reads the table after a failed create: Docker may have
// created the chain between our read and our write.
func chainExists(t Tables, chain string) bool {
	out, err := t.Save(Table)
	return err == nil && slices.Contains(parseSave(out).chains, chain)
}

// fixFirstJump makes "-j to" rule 1 of chain from, exactly once, in one
// iptables-restore transaction: delete the n copies seen by their spec, then
// insert one at the top. The kernel applies it whole or not at all, so there
// is no moment without a jump, and no rule number read earlier can point at
// someone else's rule by the time it is used. If another writer changed the
// copies since the read, a delete finds nothing and the transaction fails
// whole: the table is re-read and the fix tried once more.
func fixFirstJump(t Tables, from, to string, n int) error {
	err := t.Restore(jumpPayload(from, to, n, true))
	if err == nil {
		return nil
	}
	o, rerr := observe(t)
	if rerr != nil {
		return errors.Join(fmt.Errorf("making the %s jump to %s rule 1: %w", from, to, err), rerr)
	}
	rules := map[string][]string{DockerUser: o.dockerUser, Forward: o.forward, Output: o.output}[from]
	if err := t.Restore(jumpPayload(from, to, len(indices(rules, jumpRule(from, to))), true)); err != nil {
		return fmt.Errorf("making the %s jump to %s rule 1: %w", from, to, err)
	}
	return nil
}

// jumpPayload deletes n copies of "-j to" from chain from by their spec
// (iptables -D deletes the first rule that matches it) and, with insert,
// puts one back as rule 1.
func jumpPayload(from, to string, n int, insert bool) []byte {
	var b strings.Builder
	b.WriteString("*" + Table + "\n")
	for range n {
		b.WriteString("-D " + from + " -j " + to + "\n")
	}
	if insert {
		b.WriteString("-I " + from + " 1 -j " + to + "\n")
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}
