package firewall

import (
	"fmt"
	"strings"
)

// maxRepairRounds bounds how often one Ensure re-reads and repairs again
// after another writer changed the table under a repair.
const maxRepairRounds = 3

// repair fixes what reasons name, given the read o, in at most three
// transactions: IMDS-GUARD-HOST (a cgroup that vanished fails that one,
// never the main block), the forwarded path, and the OUTPUT jump.
func (m *Manager) repair(t Tables, f Family, o observed, reasons map[Reason]bool, st *FamilyState) []error {
	var errs []error
	if reasons[ReasonHostChainMissing] || reasons[ReasonHostChainModified] {
		if err := t.Restore(m.spec.HostRestorePayload(f)); err != nil {
			errs = append(errs, fmt.Errorf("rebuilding %s: %w", HostChain, err))
		} else {
			st.Rebuilt = true
			st.RebuiltChains = appendOnce(st.RebuiltChains, HostChain)
		}
	}
	if payload, guard := m.pathPayload(f, o, reasons); payload != nil {
		if err := t.Restore(payload); err != nil {
			errs = append(errs, fmt.Errorf("repairing the jumps to %s: %w", Chain, err))
		} else if guard {
			st.Rebuilt = true
			st.RebuiltChains = appendOnce(st.RebuiltChains, Chain)
		}
	}
	if reasons[ReasonOutputJumpMissing] || reasons[ReasonOutputJumpNotFirst] || reasons[ReasonOutputJumpDuplicate] {
		// After a failed rebuild the chain may not exist; the insert then
		// fails and is reported, and nothing that exists is removed.
		n := len(indices(o.output, jumpRule(Output, HostChain)))
		if err := t.Restore(jumpPayload(Output, HostChain, n, true)); err != nil {
			errs = append(errs, fmt.Errorf("making the %s jump to %s rule 1: %w", Output, HostChain, err))
		}
	}
	return errs
}

func appendOnce(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// pathPayload renders, as one iptables-restore transaction, what the
// forwarded path needs after the read o: IMDS-GUARD's body when reasons say
// it is missing or differs, and each of our two jumps to it that is missing,
// not first or doubled: FORWARD's, and DOCKER-USER's while DOCKER-USER
// exists (guard: the body is rebuilt). nil: nothing to do.
//
// It never declares DOCKER-USER and never writes "-j DOCKER-USER": both are
// Docker's, written with a check, a delete and an insert that are not
// atomic, so a second writer of the same rule can always end up with two
// (and creating DOCKER-USER before dockerd is moby#48560). Writing only our
// own rules, no Docker action can double or delete one of ours.
//
// One transaction, because the kernel applies it whole or not at all: the
// chain body exists before anything jumps to it, and a DOCKER-USER deleted
// between the read and the write fails the whole transaction, which the
// caller then reads and repairs again (the next read finds no DOCKER-USER,
// and FORWARD's jump alone is written).
func (m *Manager) pathPayload(f Family, o observed, reasons map[Reason]bool) (payload []byte, guard bool) {
	guard = reasons[ReasonChainMissing] || reasons[ReasonChainModified]
	fwd := reasons[ReasonForwardJumpMissing] || reasons[ReasonForwardJumpNotFirst] || reasons[ReasonForwardJumpDuplicate]
	user := o.dockerUserExists && (reasons[ReasonJumpMissing] || reasons[ReasonJumpNotFirst] || reasons[ReasonJumpDuplicate])
	if !guard && !fwd && !user {
		return nil, false
	}
	var b strings.Builder
	b.WriteString("*" + Table + "\n")
	if guard {
		b.WriteString(":" + Chain + " - [0:0]\n")
		for _, r := range m.spec.Rules(f) {
			b.WriteString(r + "\n")
		}
	}
	if fwd {
		writeJump(&b, Forward, Chain, len(indices(o.forward, jumpRule(Forward, Chain))), true)
	}
	if user {
		writeJump(&b, DockerUser, Chain, len(indices(o.dockerUser, jumpRule(DockerUser, Chain))), true)
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String()), guard
}

// writeJump deletes n copies of "-j to" from chain from by their spec
// (iptables -D deletes the first rule that matches it) and, with insert,
// puts one back as rule 1.
func writeJump(b *strings.Builder, from, to string, n int, insert bool) {
	for range n {
		b.WriteString("-D " + from + " -j " + to + "\n")
	}
	if insert {
		b.WriteString("-I " + from + " 1 -j " + to + "\n")
	}
}

// jumpPayload is writeJump as a transaction of its own.
func jumpPayload(from, to string, n int, insert bool) []byte {
	var b strings.Builder
	b.WriteString("*" + Table + "\n")
	writeJump(&b, from, to, n, insert)
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}
