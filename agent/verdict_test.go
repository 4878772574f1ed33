package agent

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/firewall"
	"github.com/imdsguard/imdsguard/status"
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
	a.logVerdict("", status.Status{Verdict: status.VerdictProtected})
	a.logVerdict(status.VerdictProtected, status.Status{Verdict: status.VerdictProtected})
	a.logVerdict(status.VerdictProtected, status.Status{Verdict: status.VerdictDegraded, Reasons: []string{"container x can reach IMDS"}})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "from=starting") || !strings.Contains(lines[1], "from=protected") ||
		!strings.Contains(lines[1], "to=degraded") || !strings.Contains(lines[1], "container x can reach IMDS") {
		t.Fatalf("log:\n%s", buf.String())
	}
}

// TestClassifyJudgesEachContainer: the family's probe is dropped, but a rule
// naming one container's address lets that container through; a daemon's
// exemption ACCEPT in IMDS-GUARD is an exemption even to a command that was
// not told about it.
func TestClassifyJudgesEachContainer(t *testing.T) {
	save := "*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n:IMDS-GUARD - [0:0]\n" +
		"-A FORWARD -s 172.17.0.7/32 -j ACCEPT\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j IMDS-GUARD\n" +
		"-A IMDS-GUARD -s 172.17.0.5/32 -d 169.254.169.254/32 -m physdev --physdev-in veth5 -j ACCEPT\n" +
		"-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\nCOMMIT\n"
	rs, err := firewall.ParseRuleset(firewall.IPv4, []byte(save))
	if err != nil {
		t.Fatal(err)
	}
	rs.BridgeNF = firewall.Yes
	if !rs.Evaluate(firewall.Probe(firewall.IPv4)).Dropped {
		t.Fatal("the probe must be dropped")
	}
	addr := func(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }
	p := picture{enforced: map[string]bool{"ipv4": true}, rules: map[string]*firewall.Ruleset{"ipv4": rs}, containers: []docker.Container{
		{ID: "1111111111111111", Name: "plain", NetworkMode: "bridge", IPv4: addr("172.17.0.2")},
		{ID: "5555555555555555", Name: "exempt", NetworkMode: "bridge", IPv4: addr("172.17.0.5")},
		{ID: "6666666666666666", Name: "thief", NetworkMode: "bridge", IPv4: addr("172.17.0.5"),
			Ports: map[netip.Addr]docker.BridgePort{netip.MustParseAddr("172.17.0.5"): {Name: "veth6", Bridge: "docker0"}}},
		{ID: "7777777777777777", Name: "operator-allowed", NetworkMode: "bridge", IPv4: addr("172.17.0.7")},
	}}
	got := map[string]status.ContainerStatus{}
	for _, c := range classify(p) {
		got[c.Name] = c
	}
	if c := got["plain"]; !c.Protected {
		t.Errorf("plain: %+v", c)
	}
	if c := got["exempt"]; c.Protected || !c.Expected || !strings.Contains(c.Reason, "written by the daemon") {
		t.Errorf("exempt: %+v", c)
	}
	if c := got["thief"]; !c.Protected {
		t.Errorf("a container on another port with the exempt address: %+v", c)
	}
	if c := got["operator-allowed"]; c.Protected || c.Expected || !strings.Contains(c.Reason, "-A FORWARD -s 172.17.0.7/32 -j ACCEPT") {
		t.Errorf("operator-allowed: %+v", c)
	}
	if v, _ := verdict(p.enforced, classify(p), nil); v != status.VerdictDegraded {
		t.Errorf("verdict %s, want degraded", v)
	}
}
