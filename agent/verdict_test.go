package agent

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/firewall"
)

// TestBlockedCountersOnlyGrow: the totals follow the kernel's counters
// across rebuilds, failed reads and restarts of the counters, and never
// count a packet twice.
func TestBlockedCountersOnlyGrow(t *testing.T) {
	a := New(Options{Log: testLog(t), Namespaces: fakeNSNone{}})
	rs := &firewall.Ruleset{}
	read := func(guard, host uint64, rebuilt ...string) firewall.FamilyState {
		return firewall.FamilyState{Family: firewall.IPv4, Rules: rs, RebuiltChains: rebuilt,
			Counts: map[string][2]uint64{firewall.Chain: {guard, guard * 60}, firewall.HostChain: {host, host * 60}}}
	}
	steps := []struct {
		name string
		fs   firewall.FamilyState
		want uint64
	}{
		{"first sight is the baseline", read(100, 7), 0},
		{"growth", read(103, 8), 4},
		{"a failed read counts nothing", firewall.FamilyState{Family: firewall.IPv4, Err: errors.New("iptables-save: exit 4")}, 4},
		{"the next read continues", read(105, 8), 6},
		{"the guard rebuilt, the host chain not", read(2, 9, firewall.Chain), 9},
		{"zeroed behind our back", read(1, 0), 10},
		{"steady", read(1, 0), 10},
	}
	for _, s := range steps {
		got := a.accumulate(s.fs)
		if got[0] != s.want || got[1] != s.want*60 {
			t.Fatalf("%s: total %v, want %d packets", s.name, got, s.want)
		}
	}
}

// fakeNSNone keeps New from opening the machine's namespaces.
type fakeNSNone struct{ Namespaces }

func TestVerdictTransitionsLogged(t *testing.T) {
	var buf bytes.Buffer
	l := logrus.New()
	l.SetOutput(&buf)
	a := New(Options{Log: logrus.NewEntry(l), Namespaces: fakeNSNone{}})
	a.logVerdict("", Status{Verdict: VerdictProtected})
	a.logVerdict(VerdictProtected, Status{Verdict: VerdictProtected})
	a.logVerdict(VerdictProtected, Status{Verdict: VerdictDegraded, Reasons: []string{"container x can reach IMDS"}})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "from=starting") || !strings.Contains(lines[1], "from=protected") ||
		!strings.Contains(lines[1], "to=degraded") || !strings.Contains(lines[1], "container x can reach IMDS") {
		t.Fatalf("log:\n%s", buf.String())
	}
}
