package status

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsReadThePublishedStatus: every series is there before the
// first sync, and after a publish each says what the status says.
func TestMetricsReadThePublishedStatus(t *testing.T) {
	p := NewPublisher(Status{Verdict: VerdictDegraded}, "test", []string{"ipv4", "ipv6"}, []string{"jump_missing"})
	reg := prometheus.NewRegistry()
	reg.MustRegister(p.m)
	before := strings.Count(scrape(t, reg), "\n")
	for _, want := range []string{
		`imdsguard_repairs_total{family="ipv6",reason="jump_missing"} 0`,
		`imdsguard_rule_present{family="ipv4"} 0`,
		`imdsguard_verdict{verdict="degraded"} 1`,
		`imdsguard_awsvpc_tasks{protected="true"} 0`,
	} {
		if !strings.Contains(scrape(t, reg), want) {
			t.Errorf("before the first sync: no %s", want)
		}
	}
	now := time.Now()
	p.Publish(Status{
		Verdict: VerdictProtected, CheckedAt: now,
		Firewall: FirewallStatus{IPv4: FamilyStatus{Enabled: true, Enforced: true, BlockedPackets: 7},
			IPv6: FamilyStatus{Enabled: true, Enforced: true}, NFTables: &NFTStatus{Present: true, BlockedPackets: 3}},
		Containers: []ContainerStatus{{NetworkMode: "bridge", Protected: true}, {NetworkMode: "bridge", Protected: true}},
		RepairsBy:  map[string]map[string]uint64{"ipv4": {"jump_missing": 2}},
		Docker:     DockerStatus{Reachable: true, ListedAt: now, ListMS: 12},
		LastSync:   &SyncSummary{At: now, OK: true, LastSuccess: now, DurationMS: 30},
	})
	out := scrape(t, reg)
	for _, want := range []string{
		`imdsguard_verdict{verdict="protected"} 1`,
		`imdsguard_repairs_total{family="ipv4",reason="jump_missing"} 2`,
		`imdsguard_blocked_packets_total{family="ipv4"} 7`,
		`imdsguard_containers{network_mode="bridge",protected="true"} 2`,
		`imdsguard_nftables_present 1`,
		`imdsguard_nftables_blocked_packets_total 3`,
		`imdsguard_docker_up 1`,
		`imdsguard_sync_duration_seconds_count 1`,
		`imdsguard_docker_list_duration_seconds_count 1`,
		`imdsguard_sync_failures_total 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("after a publish: no %s", want)
		}
	}
	if after := strings.Count(out, "\n"); after <= before {
		t.Errorf("%d series after a publish, %d before", after, before)
	}
}

func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Gauge != nil:
				b.WriteString(name + " " + ftoa(m.GetGauge().GetValue()) + "\n")
			case m.Counter != nil:
				b.WriteString(name + " " + ftoa(m.GetCounter().GetValue()) + "\n")
			case m.Histogram != nil:
				b.WriteString(name + "_count " + ftoa(float64(m.GetHistogram().GetSampleCount())) + "\n")
			}
		}
	}
	return b.String()
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
