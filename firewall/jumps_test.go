package firewall

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// TestPathProblemsAndPayload: what problems() finds in FORWARD and
// DOCKER-USER, what pathPayload writes for it, and that the payload, applied,
// leaves nothing to repair and every rule not ours as it was. No payload
// ever declares DOCKER-USER or writes a jump to it: both are Docker's.
func TestPathProblemsAndPayload(t *testing.T) {
	const (
		ours      = "-A FORWARD -j IMDS-GUARD"
		docker    = "-A FORWARD -j DOCKER-USER"
		userOurs  = "-A DOCKER-USER -j IMDS-GUARD"
		userRet   = "-A DOCKER-USER -j RETURN"
		block     = "-A IMDS-GUARD -d 169.254.169.254/32 -j DROP"
		withUser  = true
		noUser    = false
		withGuard = true
	)
	for _, tc := range []struct {
		name    string
		user    bool // DOCKER-USER exists
		guard   bool // IMDS-GUARD exists
		rules   []string
		reasons []Reason
		writes  []string // payload lines between *filter and COMMIT
	}{
		{"in place", withUser, withGuard, []string{ours, docker, userOurs, userRet, block}, nil, nil},
		{"both jumps missing", withUser, withGuard, []string{docker, userRet, block},
			[]Reason{ReasonForwardJumpMissing, ReasonJumpMissing},
			[]string{"-I FORWARD 1 -j IMDS-GUARD", "-I DOCKER-USER 1 -j IMDS-GUARD"}},
		{"ours behind Docker's jump", withUser, withGuard, []string{docker, ours, userOurs, block},
			[]Reason{ReasonForwardJumpNotFirst},
			[]string{"-D FORWARD -j IMDS-GUARD", "-I FORWARD 1 -j IMDS-GUARD"}},
		{"ours behind an accept", withUser, withGuard, []string{"-A FORWARD -i eth1 -j ACCEPT", ours, docker, userOurs, block},
			[]Reason{ReasonForwardJumpNotFirst},
			[]string{"-D FORWARD -j IMDS-GUARD", "-I FORWARD 1 -j IMDS-GUARD"}},
		{"ours doubled", withUser, withGuard, []string{ours, docker, ours, userOurs, block},
			[]Reason{ReasonForwardJumpDuplicate},
			[]string{"-D FORWARD -j IMDS-GUARD", "-D FORWARD -j IMDS-GUARD", "-I FORWARD 1 -j IMDS-GUARD"}},
		{"ours doubled in DOCKER-USER", withUser, withGuard, []string{ours, docker, userOurs, userRet, userOurs, block},
			[]Reason{ReasonJumpDuplicate},
			[]string{"-D DOCKER-USER -j IMDS-GUARD", "-D DOCKER-USER -j IMDS-GUARD", "-I DOCKER-USER 1 -j IMDS-GUARD"}},
		{"ours not first in DOCKER-USER", withUser, withGuard, []string{ours, docker, userRet, userOurs, block},
			[]Reason{ReasonJumpNotFirst},
			[]string{"-D DOCKER-USER -j IMDS-GUARD", "-I DOCKER-USER 1 -j IMDS-GUARD"}},
		{"a conditional jump is not ours", withUser, withGuard, []string{"-A FORWARD -i docker0 -j IMDS-GUARD", docker, userOurs, block},
			[]Reason{ReasonForwardJumpMissing},
			[]string{"-I FORWARD 1 -j IMDS-GUARD"}},
		{"Docker's jump doubled is Docker's", withUser, withGuard, []string{ours, docker, docker, userOurs, block}, nil, nil},
		{"Docker's jump missing is Docker's", withUser, withGuard, []string{ours, userOurs, block}, nil, nil},
		{"DOCKER-USER absent", noUser, withGuard, []string{ours, block}, nil, nil},
		{"DOCKER-USER absent, nothing of ours", noUser, false, nil,
			[]Reason{ReasonChainMissing, ReasonForwardJumpMissing},
			[]string{":IMDS-GUARD - [0:0]", block, "-I FORWARD 1 -j IMDS-GUARD"}},
		{"DOCKER-USER absent, ours behind an accept", noUser, withGuard, []string{"-A FORWARD -j ACCEPT", ours, block},
			[]Reason{ReasonForwardJumpNotFirst},
			[]string{"-D FORWARD -j IMDS-GUARD", "-I FORWARD 1 -j IMDS-GUARD"}},
		{"a wipe: chain and jumps gone", withUser, false, []string{docker, userRet},
			[]Reason{ReasonChainMissing, ReasonForwardJumpMissing, ReasonJumpMissing},
			[]string{":IMDS-GUARD - [0:0]", block, "-I FORWARD 1 -j IMDS-GUARD", "-I DOCKER-USER 1 -j IMDS-GUARD"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			load := "*filter\n"
			if tc.user {
				load += ":DOCKER-USER - [0:0]\n"
			}
			if tc.guard {
				load += ":IMDS-GUARD - [0:0]\n"
			}
			// Chains first, then their rules in order, FORWARD's last.
			for _, pass := range []func(string) bool{
				func(r string) bool { return !strings.HasPrefix(r, "-A FORWARD ") },
				func(r string) bool { return strings.HasPrefix(r, "-A FORWARD ") },
			} {
				for _, r := range tc.rules {
					if pass(r) {
						load += r + "\n"
					}
				}
			}
			must(t, f.Restore([]byte(load+"COMMIT\n")))
			m := NewManager(Spec{Action: ActionDrop}, map[Family]Tables{IPv4: f}, IPv4)
			o := parseSave(must1(f.Save("")))
			ps := o.problems(IPv4, m.spec)
			if got := reasonsOf(ps); !slices.Equal(got, tc.reasons) {
				t.Fatalf("reasons %v, want %v (%v)", got, tc.reasons, ps)
			}
			reasons := map[Reason]bool{}
			for _, p := range ps {
				reasons[p.Reason] = true
			}
			payload, _ := m.pathPayload(IPv4, o, reasons)
			if strings.Contains(string(payload), ":"+DockerUser) || strings.Contains(string(payload), "-j "+DockerUser) {
				t.Fatalf("the payload writes Docker's rules:\n%s", payload)
			}
			var want []byte
			if tc.writes != nil {
				want = []byte("*filter\n" + strings.Join(tc.writes, "\n") + "\nCOMMIT\n")
			}
			if string(payload) != string(want) {
				t.Fatalf("payload:\n%s\nwant:\n%s", payload, want)
			}
			if payload == nil {
				return
			}
			before := notOurs(f)
			must(t, f.Restore(payload))
			if left := parseSave(must1(f.Save(""))).problems(IPv4, m.spec); len(left) != 0 {
				t.Errorf("after the payload: %v\n%s", left, f.Dump())
			}
			if got := notOurs(f); got != before {
				t.Errorf("the payload changed rules not ours:\n%s\nwas:\n%s", got, before)
			}
		})
	}
}

// TestCheckOursBehindDockersJump: Docker's restart puts its jump above
// ours for a moment. Check judges by what the kernel does: still blocked
// while rule 1 of DOCKER-USER is our jump, open when an operator's rule
// there accepts IMDS first (and then it names what to repair).
func TestCheckOursBehindDockersJump(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dockerUser string
		dropped    bool
	}{
		{"DOCKER-USER jumps to us first", "-A DOCKER-USER -j IMDS-GUARD\n-A DOCKER-USER -d 169.254.169.254/32 -j ACCEPT\n", true},
		{"DOCKER-USER returns", "-A DOCKER-USER -j RETURN\n", true},
		{"an operator's accept in DOCKER-USER", "-A DOCKER-USER -d 169.254.169.254/32 -j ACCEPT\n-A DOCKER-USER -j IMDS-GUARD\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			must(t, f.Restore([]byte("*filter\n:DOCKER-USER - [0:0]\n:IMDS-GUARD - [0:0]\n-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\n"+
				tc.dockerUser+"-A FORWARD -j DOCKER-USER\n-A FORWARD -j IMDS-GUARD\nCOMMIT\n")))
			m := NewManager(Spec{Action: ActionDrop}, map[Family]Tables{IPv4: f}, IPv4)
			m.SetBridgeNF(func(Family) Tri { return No })
			states, err := m.Check(context.Background())
			must(t, err)
			if st := states[0]; st.Enforced != tc.dropped || st.Probe.Dropped != tc.dropped {
				t.Fatalf("enforced %v, probe %s; want dropped %v", st.Enforced, st.Probe, tc.dropped)
			}
			if !tc.dropped && !slices.Contains(reasonsOf(states[0].Problems), ReasonForwardJumpNotFirst) {
				t.Errorf("problems %v do not say our jump is not first", states[0].Problems)
			}
		})
	}
}
