package status

import (
	"fmt"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
)

// Metrics are a collector over the published status, as node_exporter's
// collectors read /proc at scrape time: every gauge and counter is read
// from the last Status, so the metrics can never say something the status
// does not. Only the two duration histograms keep state of their own,
// observed once per published sync (Publisher.Publish).
type metrics struct {
	pub *Publisher
	// families and reasons are the label values present from the start,
	// so rate() and alerts see zeros rather than gaps.
	families, reasons []string
	version           string
	syncDuration      prometheus.Histogram
	dockerList        prometheus.Histogram
}

// durationBuckets span a quiet host's few milliseconds to a hung dockerd's
// timeout.
var durationBuckets = []float64{.005, .01, .02, .05, .1, .2, .5, 1, 2, 5}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descVerdict      = desc("imdsguard_verdict", "1 for the host's current verdict (protected, degraded, exposed), 0 for the others.", "verdict")
	descRulePresent  = desc("imdsguard_rule_present", "1 when the IMDS block is verified in place for the family.", "family")
	descRepairs      = desc("imdsguard_repairs_total", "Drift repaired, by family and reason.", "family", "reason")
	descBlockedPkts  = desc("imdsguard_blocked_packets_total", "Packets to IMDS blocked since the agent started.", "family")
	descBlockedBytes = desc("imdsguard_blocked_bytes_total", "Bytes to IMDS blocked since the agent started.", "family")
	descContainers   = desc("imdsguard_containers", "Running containers by network mode and whether IMDS is blocked for them.", "network_mode", "protected")
	descTasks        = desc("imdsguard_awsvpc_tasks", "awsvpc tasks by whether their namespace has the IMDS blackhole routes.", "protected")
	descHostNet      = desc("imdsguard_host_network_containers", "Host-network containers by whether IMDS is blocked for them (the ECS agent counts as not blocked).", "blocked")
	descExemptions   = desc("imdsguard_exemptions", "Containers exempted from the IMDS block and in force.")
	descECSSetting   = desc("imdsguard_ecs_awsvpc_block_imds", "1 when ECS_AWSVPC_BLOCK_IMDS is effectively true in the ECS config files.")
	descECSRestart   = desc("imdsguard_ecs_agent_restart_needed", "1 when the running ECS agent does not yet apply ECS_AWSVPC_BLOCK_IMDS=true from the files.")
	descDockerUp     = desc("imdsguard_docker_up", "1 when the Docker daemon answered the last sync.")
	descLastSuccess  = desc("imdsguard_last_successful_sync_timestamp_seconds", "Unix time of the last sync that verified everything.")
	descSyncFailures = desc("imdsguard_sync_failures_total", "Syncs that did not complete.")
	descNFTPresent   = desc("imdsguard_nftables_present", "1 when imdsguard's own nftables tables read back whole.")
	descNFTBlocked   = desc("imdsguard_nftables_blocked_packets_total", "Packets to IMDS dropped by imdsguard's nftables tables since the agent started.")
	descBuildInfo    = desc("imdsguard_build_info", "Always 1; the version label says which build runs.", "version")
)

func newMetrics(pub *Publisher, version string, families, reasons []string) *metrics {
	return &metrics{
		pub: pub, version: version, families: families, reasons: reasons,
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imdsguard_sync_duration_seconds", Help: "Duration of a full sync.", Buckets: durationBuckets,
		}),
		dockerList: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imdsguard_docker_list_duration_seconds", Help: "Time dockerd took to list the running containers.", Buckets: durationBuckets,
		}),
	}
}

// Describe sends nothing: an unchecked collector, since the network modes
// present change from scrape to scrape.
func (m *metrics) Describe(chan<- *prometheus.Desc) {}

// Collect reads the last published status.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	st, failures := m.pub.snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descBuildInfo, 1, m.version)
	for _, v := range []string{VerdictProtected, VerdictDegraded, VerdictExposed} {
		gauge(descVerdict, b2f(st.Verdict == v), v)
	}
	fams := map[string]FamilyStatus{"ipv4": st.Firewall.IPv4, "ipv6": st.Firewall.IPv6}
	for _, f := range m.families {
		fs := fams[f]
		gauge(descRulePresent, b2f(fs.Enforced), f)
		counter(descBlockedPkts, float64(fs.BlockedPackets), f)
		counter(descBlockedBytes, float64(fs.BlockedBytes), f)
		for _, r := range m.reasons {
			counter(descRepairs, float64(st.RepairsBy[f][r]), f, r)
		}
	}
	byMode := map[[2]string]int{}
	for _, c := range st.Containers {
		byMode[[2]string{c.NetworkMode, fmt.Sprint(c.Protected)}]++
	}
	for k, n := range byMode {
		gauge(descContainers, float64(n), k[0], k[1])
	}
	var tasks, hosts []bool
	if st.AWSVPC != nil {
		for _, t := range st.AWSVPC.Tasks {
			tasks = append(tasks, t.Protected)
		}
	}
	if st.HostNetwork != nil {
		for _, c := range st.HostNetwork.Containers {
			hosts = append(hosts, c.Blocked)
		}
	}
	boolCounts(ch, descTasks, tasks)
	boolCounts(ch, descHostNet, hosts)
	applied := 0
	for _, e := range st.Exemptions {
		if e.Applied {
			applied++
		}
	}
	gauge(descExemptions, float64(applied))
	gauge(descECSSetting, b2f(st.ECSConfig.AWSVPCBlockIMDS))
	gauge(descECSRestart, b2f(st.ECSConfig.RestartNeeded))
	gauge(descDockerUp, b2f(st.Docker.Reachable))
	last := 0.0
	if st.LastSync != nil && !st.LastSync.LastSuccess.IsZero() {
		last = float64(st.LastSync.LastSuccess.UnixNano()) / 1e9
	}
	gauge(descLastSuccess, last)
	counter(descSyncFailures, float64(failures))
	if n := st.Firewall.NFTables; n != nil {
		gauge(descNFTPresent, b2f(n.Present))
		counter(descNFTBlocked, float64(n.BlockedPackets))
	}
	m.syncDuration.Collect(ch)
	m.dockerList.Collect(ch)
	for _, c := range m.pub.collectors() {
		c.Collect(ch)
	}
}

// observe feeds the histograms from one published sync.
func (m *metrics) observe(st, prev *Status) {
	if st.LastSync != nil {
		m.syncDuration.Observe(st.LastSync.DurationMS / 1000)
	}
	if l := st.Docker.ListedAt; !l.IsZero() && st.Docker.Reachable && (prev == nil || !l.Equal(prev.Docker.ListedAt)) {
		m.dockerList.Observe(st.Docker.ListMS / 1000)
	}
}

// boolCounts sends a series with one "true"/"false" label for how many of
// vs are each, zeros included.
func boolCounts(ch chan<- prometheus.Metric, d *prometheus.Desc, vs []bool) {
	var n [2]float64
	for _, v := range vs {
		n[int(b2f(v))]++
	}
	for i, l := range []string{"false", "true"} {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, n[i], l)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// serveMetrics exposes /metrics (and /healthz, for probes that speak HTTP)
// on addr, from the agent's own registry: no Go runtime noise, nothing
// global.
func serveMetrics(addr string, ep endpoint, m *metrics, healthz http.HandlerFunc, log *logrus.Entry) (func() error, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(m); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4,
	}))
	mux.HandleFunc("GET /healthz", healthz)
	return ep.serve(l, mux, log), nil
}
