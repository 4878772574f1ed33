package agent

import (
	"fmt"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"github.com/imdsguard/imdsguard/firewall"
)

// metrics lives in its own registry: the agent's series only, no Go runtime
// noise unless asked for, and nothing global.
type metrics struct {
	reg          *prometheus.Registry
	verdict      *prometheus.GaugeVec
	rulePresent  *prometheus.GaugeVec
	repairs      *prometheus.CounterVec
	blockedPkts  *prometheus.CounterVec
	blockedBytes *prometheus.CounterVec
	// published are the blocked totals already added to the counters.
	published    map[string][2]uint64
	containers   *prometheus.GaugeVec
	awsvpcTasks  *prometheus.GaugeVec
	hostNet      *prometheus.GaugeVec
	exemptions   prometheus.Gauge
	ecsSetting   prometheus.Gauge
	ecsRestart   prometheus.Gauge
	dockerUp     prometheus.Gauge
	lastSuccess  prometheus.Gauge
	syncDuration prometheus.Histogram
	dockerList   prometheus.Histogram
	syncFailures prometheus.Counter
	repairsByFam map[firewall.Family]bool
}

// durationBuckets span a quiet host's few milliseconds to a hung dockerd's
// timeout.
var durationBuckets = []float64{.005, .01, .02, .05, .1, .2, .5, 1, 2, 5}

func newMetrics(version string, families []firewall.Family) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		verdict: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imdsguard_verdict", Help: "1 for the host's current verdict (protected, degraded, exposed), 0 for the others.",
		}, []string{"verdict"}),
		rulePresent: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imdsguard_rule_present", Help: "1 when the IMDS block is verified in place for the family.",
		}, []string{"family"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imdsguard_repairs_total", Help: "Drift repaired, by family and reason.",
		}, []string{"family", "reason"}),
		// Counters fed from kernel counters that restart when a chain is
		// rebuilt; the agent accumulates them (Agent.accumulate), and only
		// the growth of its totals is added here.
		blockedPkts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imdsguard_blocked_packets_total", Help: "Packets to IMDS blocked since the agent started.",
		}, []string{"family"}),
		blockedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imdsguard_blocked_bytes_total", Help: "Bytes to IMDS blocked since the agent started.",
		}, []string{"family"}),
		published: map[string][2]uint64{},
		containers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imdsguard_containers", Help: "Running containers by network mode and whether IMDS is blocked for them.",
		}, []string{"network_mode", "protected"}),
		awsvpcTasks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imdsguard_awsvpc_tasks", Help: "awsvpc tasks by whether their namespace has the IMDS blackhole routes.",
		}, []string{"protected"}),
		hostNet: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imdsguard_host_network_containers", Help: "Host-network containers by whether IMDS is blocked for them (the ECS agent counts as not blocked).",
		}, []string{"blocked"}),
		exemptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imdsguard_exemptions", Help: "Containers exempted from the IMDS block and in force.",
		}),
		ecsSetting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imdsguard_ecs_awsvpc_block_imds", Help: "1 when ECS_AWSVPC_BLOCK_IMDS is effectively true in the ECS config files.",
		}),
		ecsRestart: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imdsguard_ecs_agent_restart_needed", Help: "1 when the running ECS agent does not yet apply ECS_AWSVPC_BLOCK_IMDS=true from the files.",
		}),
		dockerUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imdsguard_docker_up", Help: "1 when the Docker daemon answered the last sync.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imdsguard_last_successful_sync_timestamp_seconds", Help: "Unix time of the last sync that verified everything.",
		}),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imdsguard_sync_duration_seconds", Help: "Duration of a full sync.",
			Buckets: durationBuckets,
		}),
		dockerList: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imdsguard_docker_list_duration_seconds", Help: "Time dockerd took to list the running containers.",
			Buckets: durationBuckets,
		}),
		syncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imdsguard_sync_failures_total", Help: "Syncs that did not complete.",
		}),
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "imdsguard_build_info", Help: "Always 1; the version label says which build runs.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	info.Set(1)
	m.reg.MustRegister(m.verdict, m.rulePresent, m.repairs, m.blockedPkts, m.blockedBytes, m.containers,
		m.awsvpcTasks, m.hostNet, m.exemptions,
		m.ecsSetting, m.ecsRestart, m.dockerUp, m.lastSuccess, m.syncDuration, m.dockerList, m.syncFailures, info)
	// Every series exists from the start, so rate() and alerts see zeros
	// rather than gaps.
	for _, f := range families {
		for _, r := range firewall.Reasons {
			m.repairs.WithLabelValues(string(f), string(r))
		}
		m.repairs.WithLabelValues(string(f), ReasonAWSVPCRoute)
		m.rulePresent.WithLabelValues(string(f))
		m.blockedPkts.WithLabelValues(string(f))
		m.blockedBytes.WithLabelValues(string(f))
	}
	for _, v := range []string{VerdictProtected, VerdictDegraded, VerdictExposed} {
		m.verdict.WithLabelValues(v)
	}
	for _, b := range []string{"true", "false"} {
		m.awsvpcTasks.WithLabelValues(b)
		m.hostNet.WithLabelValues(b)
	}
	return m
}

// observe publishes one sync's status.
func (m *metrics) observe(st *Status, err error) {
	for _, v := range []string{VerdictProtected, VerdictDegraded, VerdictExposed} {
		m.verdict.WithLabelValues(v).Set(b2f(st.Verdict == v))
	}
	for fam, fs := range map[string]FamilyStatus{"ipv4": st.Firewall.IPv4, "ipv6": st.Firewall.IPv6} {
		if !fs.Enabled {
			continue
		}
		m.rulePresent.WithLabelValues(fam).Set(b2f(fs.Enforced))
		last := m.published[fam]
		if fs.BlockedPackets > last[0] {
			m.blockedPkts.WithLabelValues(fam).Add(float64(fs.BlockedPackets - last[0]))
			last[0] = fs.BlockedPackets
		}
		if fs.BlockedBytes > last[1] {
			m.blockedBytes.WithLabelValues(fam).Add(float64(fs.BlockedBytes - last[1]))
			last[1] = fs.BlockedBytes
		}
		m.published[fam] = last
	}
	m.containers.Reset()
	for _, c := range st.Containers {
		m.containers.WithLabelValues(c.NetworkMode, fmt.Sprint(c.Protected)).Inc()
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
	setBoolCounts(m.awsvpcTasks, tasks)
	setBoolCounts(m.hostNet, hosts)
	applied := 0
	for _, e := range st.Exemptions {
		if e.Applied {
			applied++
		}
	}
	m.exemptions.Set(float64(applied))
	m.ecsSetting.Set(b2f(st.ECSConfig.AWSVPCBlockIMDS))
	m.ecsRestart.Set(b2f(st.ECSConfig.RestartNeeded))
	m.dockerUp.Set(b2f(st.Docker.Reachable))
	if st.LastSync != nil {
		m.syncDuration.Observe(st.LastSync.DurationMS / 1000)
	}
	if err != nil {
		m.syncFailures.Inc()
	} else {
		m.lastSuccess.Set(float64(st.CheckedAt.UnixNano()) / 1e9)
	}
}

// setBoolCounts sets a gauge with one "true"/"false" label to how many of
// vs are each, zeros included.
func setBoolCounts(g *prometheus.GaugeVec, vs []bool) {
	var n [2]float64
	for _, v := range vs {
		n[int(b2f(v))]++
	}
	g.WithLabelValues("false").Set(n[0])
	g.WithLabelValues("true").Set(n[1])
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// serve exposes /metrics (and /healthz, for probes that speak HTTP) on addr.
func (m *metrics) serve(addr string, ep endpoint, healthz http.HandlerFunc, log *logrus.Entry) (func() error, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4,
	}))
	mux.HandleFunc("GET /healthz", healthz)
	return ep.serve(l, mux, log), nil
}
