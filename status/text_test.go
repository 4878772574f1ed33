package status

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// manyContainers is a 500-container host: bridged and awsvpc containers
// blocked, a few host-network ones reachable, a few exempt.
func manyContainers() *Status {
	st := &Status{Verdict: VerdictDegraded, Docker: DockerStatus{Reachable: true}, Firewall: FirewallStatus{Action: "drop", Backend: "nft",
		IPv4: FamilyStatus{Enabled: true, Enforced: true}, IPv6: FamilyStatus{Enabled: true, Enforced: true}}}
	for i := range 500 {
		c := ContainerStatus{ID: fmt.Sprintf("%012x", i), Name: fmt.Sprintf("ecs-task-%d-app", i), NetworkMode: "bridge",
			Protected: true, Reason: "bridged: dropped by IMDS-GUARD"}
		switch {
		case i%100 == 1:
			c.NetworkMode, c.Protected, c.Reason = "host", false, "host network: traffic leaves from the host itself"
			st.Reasons = append(st.Reasons, "container "+c.Name+" can reach IMDS: "+c.Reason)
		case i%100 == 2:
			c.Protected, c.Expected, c.Reason = false, true, "bridged, exempt (label imdsguard.allow-imds=true)"
			st.Exemptions = append(st.Exemptions, Exemption{ID: c.ID, Name: c.Name, Why: "label imdsguard.allow-imds=true", Applied: true})
		case i%5 == 0:
			c.NetworkMode, c.Reason = "awsvpc", "awsvpc task: every route lookup to IMDS is refused"
		}
		st.Containers = append(st.Containers, c)
	}
	return st
}

func TestTextFitsOneScreen(t *testing.T) {
	st := manyContainers()
	var b strings.Builder
	st.WriteText(&b)
	out := b.String()
	t.Logf("imdsguard status, 500 containers:\n%s", out)
	if n := strings.Count(out, "\n"); n > 50 {
		t.Fatalf("%d lines for 500 containers", n)
	}
	for _, want := range []string{"bridge           395      390        5          0", "host               5        0        0          5",
		"REACHABLE", "allowed", "ecs-task-1-app", "ecs-task-2-app"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	if strings.Contains(out, "ecs-task-0-app") {
		t.Error("a blocked container is listed on the one screen")
	}
	b.Reset()
	st.WriteTextAll(&b)
	if all := b.String(); !strings.Contains(all, "ecs-task-0-app") || strings.Count(all, "\n") < 500 {
		t.Fatalf("--all does not list every container (%d lines)", strings.Count(all, "\n"))
	}
}

func TestTextIPv6NotApplicable(t *testing.T) {
	st := &Status{Verdict: VerdictProtected, Firewall: FirewallStatus{IPv4: FamilyStatus{Enabled: true, Enforced: true},
		IPv6: FamilyStatus{Enabled: true, NotApplicable: "the kernel has no IPv6"}}}
	var b strings.Builder
	st.WriteText(&b)
	if !strings.Contains(b.String(), "ipv6 not applicable (the kernel has no IPv6)") || !st.BlockInPlace() {
		t.Fatalf("in place %v:\n%s", st.BlockInPlace(), b.String())
	}
}

func TestStale(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name    string
		verdict string
		sync    *SyncSummary
		stale   bool
	}{
		{"no sync yet (starting)", VerdictDegraded, nil, false},
		{"fresh", VerdictProtected, &SyncSummary{At: now, OK: true, LastSuccess: now.Add(-5 * time.Second), StaleAfterS: 15}, false},
		{"syncs fail (a broken file): degraded says so", VerdictDegraded, &SyncSummary{At: now, LastSuccess: now.Add(-time.Minute), StaleAfterS: 15}, false},
		{"protected from an old success", VerdictProtected, &SyncSummary{At: now, LastSuccess: now.Add(-time.Minute), StaleAfterS: 15}, true},
		{"protected, never verified", VerdictProtected, &SyncSummary{At: now, StaleAfterS: 15}, true},
		{"the loop stopped (hung)", VerdictDegraded, &SyncSummary{At: now.Add(-time.Minute), LastSuccess: now.Add(-time.Minute), StaleAfterS: 15}, true},
	} {
		st := &Status{Verdict: tc.verdict, LastSync: tc.sync}
		if got, why := st.Stale(now); got != tc.stale {
			t.Errorf("%s: stale %v (%s), want %v", tc.name, got, why, tc.stale)
		}
	}
}
