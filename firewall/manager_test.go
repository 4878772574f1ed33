package firewall

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func newFakeManager(action Action) (*Manager, map[Family]*Fake) {
	fakes := map[Family]*Fake{IPv4: NewFake(), IPv6: NewFake()}
	tables := map[Family]Tables{IPv4: fakes[IPv4], IPv6: fakes[IPv6]}
	return NewManager(Spec{Action: action}, tables, IPv4, IPv6), fakes
}

// dockerRuleset installs what Docker 20.10 leaves in the filter table.
func dockerRuleset(t *testing.T, f *Fake) {
	t.Helper()
	for _, c := range []string{"DOCKER", "DOCKER-ISOLATION-STAGE-1", DockerUser} {
		must(t, f.NewChain(Table, c))
	}
	must(t, f.Append(Forward, "-j", DockerUser))
	must(t, f.Append(Forward, "-j", "DOCKER-ISOLATION-STAGE-1"))
	must(t, f.Append(Forward, "-o", "docker0", "-j", "DOCKER"))
	must(t, f.Append(Forward, "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"))
	must(t, f.Append(DockerUser, "-j", "RETURN"))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

const wantDocker = `:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-USER - [0:0]
:IMDS-GUARD - [0:0]
-A FORWARD -j IMDS-GUARD
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A DOCKER-USER -j IMDS-GUARD
-A DOCKER-USER -j RETURN
-A IMDS-GUARD -d 169.254.169.254/32 -j DROP`

func TestEnsureFromDockerRuleset(t *testing.T) {
	m, fakes := newFakeManager(ActionDrop)
	dockerRuleset(t, fakes[IPv4])
	dockerRuleset(t, fakes[IPv6])
	states, err := m.Ensure(context.Background())
	must(t, err)
	for _, st := range states {
		if !st.Enforced {
			t.Errorf("%s not enforced: %v", st.Family, st.Problems)
		}
	}
	if got := fakes[IPv4].Dump(); got != wantDocker {
		t.Errorf("ipv4 ruleset:\n%s\nwant:\n%s", got, wantDocker)
	}
	want6 := strings.Replace(wantDocker, "169.254.169.254/32", "fd00:ec2::254/128", 1)
	if got := fakes[IPv6].Dump(); got != want6 {
		t.Errorf("ipv6 ruleset:\n%s\nwant:\n%s", got, want6)
	}
	// Idempotent: a second pass finds nothing and changes nothing.
	before := fakes[IPv4].Calls + fakes[IPv6].Calls
	states, err = m.Ensure(context.Background())
	must(t, err)
	if n := fakes[IPv4].Calls + fakes[IPv6].Calls; n != before {
		t.Errorf("second Ensure made %d changes", n-before)
	}
	for _, st := range states {
		if len(st.Problems) != 0 || !st.Enforced {
			t.Errorf("second Ensure: %+v", st)
		}
	}
}

func reasonsOf(ps []Problem) []Reason {
	var out []Reason
	for _, p := range ps {
		out = append(out, p.Reason)
	}
	return out
}

// TestEnsureBeforeDocker: the agent may start before docker.service, with
// nothing of Docker there yet. FORWARD's jump alone blocks; DOCKER-USER is
// left for Docker to create (creating it first is moby#48560), and the sync
// after Docker did gets our jump into it.
func TestEnsureBeforeDocker(t *testing.T) {
	m, fakes := newFakeManager(ActionReject)
	states, err := m.Ensure(context.Background())
	must(t, err)
	if got, want := reasonsOf(states[0].Problems), []Reason{ReasonChainMissing, ReasonForwardJumpMissing}; !slices.Equal(got, want) {
		t.Errorf("reasons %v, want %v", got, want)
	}
	if !states[0].Enforced {
		t.Errorf("not enforced without Docker: %+v", states[0])
	}
	got := fakes[IPv6].Dump()
	want6 := `:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:IMDS-GUARD - [0:0]
-A FORWARD -j IMDS-GUARD
-A IMDS-GUARD -d fd00:ec2::254/128 -p tcp -j REJECT --reject-with tcp-reset
-A IMDS-GUARD -d fd00:ec2::254/128 -j REJECT --reject-with icmp6-port-unreachable`
	if got != want6 {
		t.Errorf("ruleset:\n%s\nwant:\n%s", got, want6)
	}
	// dockerd starts: its chain, and its jump inserted at rule 1.
	for _, f := range fakes {
		must(t, f.NewChain(Table, DockerUser))
		must(t, f.Insert(Table, Forward, 1, "-j", DockerUser))
	}
	states, err = m.Ensure(context.Background())
	must(t, err)
	if got, want := reasonsOf(states[0].Problems), []Reason{ReasonForwardJumpNotFirst, ReasonJumpMissing}; !slices.Equal(got, want) || !states[0].Enforced {
		t.Errorf("after dockerd: reasons %v (want %v), enforced %v", got, want, states[0].Enforced)
	}
	for _, f := range fakes {
		assertProtected(t, f)
	}
}

// drifts are the ways the ruleset breaks in the field, each as the operator
// command that causes it.
var drifts = map[string]func(f *Fake){
	"flush DOCKER-USER":        func(f *Fake) { f.Flush(DockerUser) },
	"flush FORWARD":            func(f *Fake) { f.Flush(Forward) },
	"flush IMDS-GUARD":         func(f *Fake) { f.Flush(Chain) },
	"restore without our rule": func(f *Fake) { f.Reset() },
	"delete the jump":          func(f *Fake) { f.deleteAll(DockerUser, jumpRule(DockerUser, Chain)) },
	"delete the FORWARD jump":  func(f *Fake) { f.deleteAll(Forward, jumpRule(Forward, Chain)) },
	"duplicate FORWARD jump":   func(f *Fake) { _ = f.Append(Forward, "-j", Chain) },
	// Docker's EnsureJumpRule on its start or a firewalld reload: delete
	// its jump if there, insert it at rule 1.
	"Docker re-inserts its jump": dockerEnsureJump,
	// A restore or firewalld wiping DOCKER-USER and Docker's jump, Docker
	// not (yet) back.
	"DOCKER-USER deleted": func(f *Fake) {
		f.deleteAll(Forward, jumpRule(Forward, DockerUser))
		f.Flush(DockerUser)
		_ = f.DeleteChain(DockerUser)
	},
	"chain removed (-F; -X)": func(f *Fake) {
		f.Flush(DockerUser)
		f.Flush(Chain)
		_ = f.DeleteChain(Chain)
	},
	"rule inserted above the jump": func(f *Fake) { _ = f.Insert(Table, DockerUser, 1, "-s", "10.0.0.0/8", "-j", "ACCEPT") },
	"duplicate jump":               func(f *Fake) { _ = f.Append(DockerUser, "-j", Chain) },
	"ACCEPT above FORWARD jump":    func(f *Fake) { _ = f.Insert(Table, Forward, 1, "-j", "ACCEPT") },
	"chain body edited": func(f *Fake) {
		f.mu.Lock()
		if _, ok := f.rules[Chain]; ok {
			f.rules[Chain] = []string{"-A IMDS-GUARD -d 169.254.169.254/32 -j ACCEPT"}
		}
		f.mu.Unlock()
	},
}

func TestEnsureRepairsEveryDrift(t *testing.T) {
	for name, drift := range drifts {
		t.Run(name, func(t *testing.T) {
			m, fakes := newFakeManager(ActionDrop)
			f := fakes[IPv4]
			dockerRuleset(t, f)
			_, err := m.Ensure(context.Background())
			must(t, err)
			drift(f)
			states, err := m.Ensure(context.Background())
			must(t, err)
			// Deleting DOCKER-USER is no problem of ours: FORWARD's jump
			// blocks, and Docker puts its chain back.
			if len(states[0].Problems) == 0 && name != "DOCKER-USER deleted" {
				t.Fatalf("drift %q not noticed", name)
			}
			if !states[0].Enforced {
				t.Fatalf("not enforced after repair: %v", states[0].Problems)
			}
			assertProtected(t, f)
		})
	}
}

// TestEnsureAnyOrder replays random sequences of drifts and repairs: any
// state must lead back to protection in one Ensure.
func TestEnsureAnyOrder(t *testing.T) {
	names := make([]string, 0, len(drifts))
	for n := range drifts {
		names = append(names, n)
	}
	slices.Sort(names)
	r := rand.New(rand.NewPCG(1, 2))
	m, fakes := newFakeManager(ActionDrop)
	f := fakes[IPv4]
	dockerRuleset(t, f)
	for i := 0; i < 300; i++ {
		for k := r.IntN(3) + 1; k > 0; k-- {
			drifts[names[r.IntN(len(names))]](f)
		}
		if r.IntN(4) == 0 && !f.exists(DockerUser) {
			// dockerd restarts after a wipe: its chain and its jump.
			must(t, f.NewChain(Table, DockerUser))
			dockerEnsureJump(f)
		}
		docker := notOurs(f)
		states, err := m.Ensure(context.Background())
		if err != nil || !states[0].Enforced {
			t.Fatalf("step %d: err=%v state=%+v\n%s", i, err, states[0], f.Dump())
		}
		assertProtected(t, f)
		if got := notOurs(f); got != docker {
			t.Fatalf("step %d: Ensure changed rules not its own:\n%s\nwas:\n%s", i, got, docker)
		}
	}
}

// dockerEnsureJump is Docker's EnsureJumpRule for FORWARD -j DOCKER-USER
// (every version): -C, -D if there, -I at rule 1.
func dockerEnsureJump(f *Fake) {
	if !f.exists(DockerUser) {
		return
	}
	f.deleteFirst(Forward, jumpRule(Forward, DockerUser))
	_ = f.Insert(Table, Forward, 1, "-j", DockerUser)
}

// notOurs is everything in the filter table imdsguard does not own: chains
// and rules but IMDS-GUARD and the jumps to it. Ensure must never change it.
func notOurs(f *Fake) string {
	var keep []string
	for _, l := range strings.Split(f.Dump(), "\n") {
		if !strings.Contains(l, Chain) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// assertProtected checks the invariant itself, independently of problems():
// rule 1 of FORWARD is our only jump there, rule 1 of DOCKER-USER (when
// Docker's chain exists) is our only jump there, and the chain drops IMDS.
func assertProtected(t *testing.T, f *Fake) {
	t.Helper()
	o := parseSave(must1(f.Save(Table)))
	for _, j := range []struct {
		exists bool
		rules  []string
		from   string
	}{{true, o.forward, Forward}, {o.dockerUserExists, o.dockerUser, DockerUser}} {
		if j.exists && (len(j.rules) == 0 || j.rules[0] != jumpRule(j.from, Chain) || len(indices(j.rules, jumpRule(j.from, Chain))) != 1) {
			t.Fatalf("rule 1 of %s is not our only jump:\n%s", j.from, f.Dump())
		}
	}
	if !slices.ContainsFunc([]Spec{{Action: ActionDrop}, {Action: ActionReject}}, func(s Spec) bool {
		return slices.Equal(o.guard, s.Rules(IPv4)) || slices.Equal(o.guard, s.Rules(IPv6))
	}) {
		t.Fatalf("IMDS-GUARD body wrong:\n%s", f.Dump())
	}
}

func must1[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestCheckChangesNothing(t *testing.T) {
	m, fakes := newFakeManager(ActionDrop)
	dockerRuleset(t, fakes[IPv4])
	before, calls := fakes[IPv4].Dump(), fakes[IPv4].Calls
	states, err := m.Check(context.Background())
	must(t, err)
	if states[0].Enforced || len(states[0].Problems) == 0 {
		t.Errorf("check says %+v on an unprotected ruleset", states[0])
	}
	if fakes[IPv4].Dump() != before || fakes[IPv4].Calls != calls {
		t.Error("check changed the ruleset")
	}
}

func TestFailedRestoreNeverOpens(t *testing.T) {
	m, fakes := newFakeManager(ActionDrop)
	f := fakes[IPv4]
	dockerRuleset(t, f)
	_, err := m.Ensure(context.Background())
	must(t, err)
	f.FailRestore = errors.New("iptables-restore: line 2 failed")
	f.mu.Lock()
	f.rules[Chain] = []string{"-A IMDS-GUARD -d 169.254.169.254/32 -j DROP", "-A IMDS-GUARD -j ACCEPT"}
	f.mu.Unlock()
	states, err := m.Ensure(context.Background())
	if err == nil || states[0].Enforced {
		t.Fatalf("want an error and not enforced, got %v %+v", err, states[0])
	}
	if !strings.Contains(err.Error(), "line 2 failed") {
		t.Errorf("error lost its cause: %v", err)
	}
	// The jumps stay: a failed rebuild leaves the old chain in force.
	if o := parseSave(must1(f.Save(Table))); o.forward[0] != jumpRule(Forward, Chain) || o.dockerUser[0] != jumpRule(DockerUser, Chain) {
		t.Errorf("jump removed after a failed rebuild:\n%s", f.Dump())
	}
}

func TestRemoveOnlyWhatWeOwn(t *testing.T) {
	m, fakes := newFakeManager(ActionDrop)
	f := fakes[IPv4]
	dockerRuleset(t, f)
	must(t, f.Append(DockerUser, "-s", "10.1.0.0/16", "-j", "DROP"))
	before := f.Dump()
	_, err := m.Ensure(context.Background())
	must(t, err)
	must(t, f.Append(DockerUser, "-j", Chain)) // stray duplicates go too
	must(t, f.Append(Forward, "-j", Chain))
	must(t, m.Remove(context.Background()))
	if got := f.Dump(); got != before {
		t.Errorf("after remove:\n%s\nwant the ruleset as it was:\n%s", got, before)
	}
	// Removing twice is fine.
	must(t, m.Remove(context.Background()))
}

// TestCountersSummed: the blocking rules' counters add up; packets an
// exemption accepted are not blocked traffic.
func TestCountersSummed(t *testing.T) {
	for _, tc := range []struct {
		name        string
		spec        Spec
		pkts, bytes uint64
	}{
		{"reject: both rules", Spec{Action: ActionReject}, 5, 300},
		{"an exemption first", Spec{Action: ActionDrop, Exempt: []Exemption{{Container: "c", Port: "veth2", Addrs: []netip.Addr{netip.MustParseAddr("172.17.0.2")}}}}, 2, 120},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, fakes := newFakeManager(tc.spec.Action)
			f := fakes[IPv4]
			dockerRuleset(t, f)
			m.SetSpec(tc.spec)
			_, err := m.Ensure(context.Background())
			must(t, err)
			// Rule 1 of reject's and the exemption's ACCEPT: only
			// blocking rules count. The exemption's second ACCEPT is
			// rule 2, its block rule 3.
			f.SetCounters(Chain, 1, 3, 180)
			if len(tc.spec.Exempt) > 0 {
				f.SetCounters(Chain, 2, 7, 420)
				f.SetCounters(Chain, 3, 2, 120)
			} else {
				f.SetCounters(Chain, 2, 2, 120)
			}
			states, err := m.Check(context.Background())
			must(t, err)
			if states[0].Packets != tc.pkts || states[0].Bytes != tc.bytes {
				t.Errorf("counters %d/%d, want %d/%d", states[0].Packets, states[0].Bytes, tc.pkts, tc.bytes)
			}
		})
	}
}

func TestParseSave(t *testing.T) {
	// Real iptables-nft-save -c output from a Docker 20.10 host namespace.
	out := `# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Nov 23 12:00:00 2026
*filter
:INPUT ACCEPT [10:600]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
:IMDS-GUARD - [0:0]
[4:240] -A FORWARD -j IMDS-GUARD
[0:0] -A FORWARD -j DOCKER-USER
[0:0] -A FORWARD -o docker0 -j DOCKER
[4:240] -A DOCKER-USER -j IMDS-GUARD
[0:0] -A DOCKER-USER -j RETURN
[3:180] -A IMDS-GUARD -d 169.254.169.254/32 -p tcp -j REJECT --reject-with tcp-reset
[1:60] -A IMDS-GUARD -d 169.254.169.254/32 -j REJECT --reject-with icmp-port-unreachable
COMMIT
# Completed on Mon Nov 23 12:00:00 2026
`
	o := parseSave([]byte(out))
	if !o.dockerUserExists || !o.guardExists {
		t.Fatalf("chains not found: %+v", o)
	}
	if o.packets != 4 || o.bytes != 240 {
		t.Errorf("counters %d/%d", o.packets, o.bytes)
	}
	if !slices.Equal(o.guard, Spec{Action: ActionReject}.Rules(IPv4)) {
		t.Errorf("guard %q", o.guard)
	}
	if ps := o.problems(IPv4, Spec{Action: ActionReject}); len(ps) != 0 {
		t.Errorf("problems %v", ps)
	}
	if ps := o.problems(IPv4, Spec{Action: ActionDrop}); len(ps) != 1 || ps[0].Reason != ReasonChainModified {
		t.Errorf("action change not seen: %v", ps)
	}
}

func TestRestorePayloadDeclaresOnlyOurChain(t *testing.T) {
	got := string(Spec{Action: ActionDrop}.RestorePayload(IPv4))
	want := "*filter\n:IMDS-GUARD - [0:0]\n-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\nCOMMIT\n"
	if got != want {
		t.Errorf("payload %q, want %q", got, want)
	}
}

func BenchmarkRender(b *testing.B) {
	s := Spec{Action: ActionReject}
	for b.Loop() {
		_ = s.RestorePayload(IPv6)
	}
}

func BenchmarkEnsureSteadyState(b *testing.B) {
	m, fakes := newFakeManager(ActionDrop)
	for _, f := range fakes {
		for _, c := range []string{"DOCKER", DockerUser} {
			_ = f.NewChain(Table, c)
		}
		_ = f.Append(Forward, "-j", DockerUser)
	}
	ctx := context.Background()
	for b.Loop() {
		if _, err := m.Ensure(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// TestForwardJumpNoPileUp: after a firewalld reload Docker re-adds its
// FORWARD rules one -I at a time, its jump to DOCKER-USER last, while the
// agent repairs. Each repair moves our jump back to rule 1 and leaves no copy
// behind; Docker's rules are Docker's, never doubled or removed by us.
func TestForwardJumpNoPileUp(t *testing.T) {
	m, fakes := newFakeManager(ActionDrop)
	f := fakes[IPv4]
	dockerRuleset(t, f)
	dockerRuleset(t, fakes[IPv6])
	for i := range 5 {
		must(t, f.Insert(Table, Forward, 1, "-i", "docker0", "-o", "docker0", "-j", "ACCEPT"))
		dockerEnsureJump(f)
		states, err := m.Ensure(context.Background())
		if err != nil || !states[0].Enforced {
			t.Fatalf("repair %d: %v %+v", i, err, states[0])
		}
		assertProtected(t, f)
		o := parseSave(must1(f.Save(Table)))
		if n := len(indices(o.forward, jumpRule(Forward, DockerUser))); n != 1 || o.forward[1] != jumpRule(Forward, DockerUser) {
			t.Fatalf("repair %d: Docker's jump %d times, want once as rule 2:\n%s", i, n, f.Dump())
		}
	}
}

// TestEnsureReducesDuplicateJumps: duplicates of our jumps in FORWARD and
// DOCKER-USER are deleted by their spec, the operator's rules between them
// stay, and a doubled Docker jump is Docker's: left alone.
func TestEnsureReducesDuplicateJumps(t *testing.T) {
	m, fakes := newFakeManager(ActionDrop)
	for _, f := range fakes {
		dockerRuleset(t, f)
		must(t, f.Append(Forward, "-j", DockerUser))
		must(t, f.Insert(Table, DockerUser, 1, "-s", "10.9.9.9/32", "-j", "DROP"))
	}
	if _, err := m.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Stale duplicates behind the operator's rule and behind Docker's jump.
	must(t, fakes[IPv4].Insert(Table, DockerUser, 3, "-j", Chain))
	must(t, fakes[IPv4].Insert(Table, Forward, 3, "-j", Chain))
	states, err := m.Ensure(context.Background())
	if err != nil || !states[0].Enforced {
		t.Fatalf("Ensure = %+v, %v", states, err)
	}
	for fam, f := range fakes {
		assertProtected(t, f)
		o := parseSave(must1(f.Save(Table)))
		if n := len(indices(o.forward, jumpRule(Forward, DockerUser))); n != 2 {
			t.Errorf("%s FORWARD = %q: Docker's two jumps changed", fam, o.forward)
		}
		want := []string{jumpRule(DockerUser, Chain), "-A DOCKER-USER -s 10.9.9.9/32 -j DROP", "-A DOCKER-USER -j RETURN"}
		if !slices.Equal(o.dockerUser, want) {
			t.Errorf("%s DOCKER-USER = %q, want %q", fam, o.dockerUser, want)
		}
	}
}
