// Package status owns what imdsguard says about a host: the status
// document (`check --json`, `status --json`, GET /status), its text
// rendering, the daemon's last published status, the root-only (or one
// group's) status socket with /status, /healthz and pprof, the client
// `imdsguard status` uses, and the Prometheus metrics, read from the
// published status at scrape time. It decides nothing: every value comes
// from the agent's pass, and it must not read the firewall, Docker or the
// ECS configuration itself.
package status

import (
	"fmt"
	"time"

	"github.com/imdsguard/imdsguard/attempts"
	"github.com/imdsguard/imdsguard/ecsconfig"
)

// Status is the whole answer to "is this host protected?". `check --json`,
// `status --json` and GET /status all print this shape; other tools parse it,
// so fields are only ever added.
type Status struct {
	Verdict string `json:"verdict"`
	// Reasons say why the verdict is not "protected".
	Reasons    []string          `json:"reasons,omitempty"`
	CheckedAt  time.Time         `json:"checked_at"`
	Source     string            `json:"source"` // "daemon" or "check"
	Firewall   FirewallStatus    `json:"firewall"`
	ECSConfig  ECSStatus         `json:"ecs_config"`
	Docker     DockerStatus      `json:"docker"`
	Containers []ContainerStatus `json:"containers"`
	// AWSVPC is every awsvpc task's namespace and its blackhole routes.
	AWSVPC *AWSVPCStatus `json:"awsvpc,omitempty"`
	// HostNetwork is every host-network container and whether it is blocked.
	HostNetwork *HostNetworkStatus `json:"host_network,omitempty"`
	// Exemptions are the containers allowed to reach IMDS, and why.
	Exemptions []Exemption `json:"exemptions"`
	// Repairs counts drift the daemon repaired since it started.
	Repairs uint64 `json:"repairs"`
	// RepairsBy counts them by family and reason (imdsguard_repairs_total).
	RepairsBy map[string]map[string]uint64 `json:"repairs_by,omitempty"`
	LastSync  *SyncSummary                 `json:"last_sync,omitempty"`
	Version   string                       `json:"version"`
	// BlockedAttempts are the last attempts to reach IMDS that were
	// blocked, newest first, each with its container and task (daemon
	// only); Attempts counts them.
	BlockedAttempts []attempts.Attempt `json:"blocked_attempts,omitempty"`
	Attempts        *AttemptsStatus    `json:"attempts,omitempty"`
}

// FirewallStatus is the verified state of the IMDS block.
type FirewallStatus struct {
	Backend string       `json:"backend,omitempty"`
	Why     string       `json:"backend_reason,omitempty"`
	Action  string       `json:"action"`
	IPv4    FamilyStatus `json:"ipv4"`
	IPv6    FamilyStatus `json:"ipv6"`
	Error   string       `json:"error,omitempty"`
	// NFTables is layer 1, imdsguard's own tables (ipv4/ipv6 above are
	// layer 2, the iptables chain).
	NFTables *NFTStatus `json:"nftables,omitempty"`
}

// FamilyStatus is one family's block.
type FamilyStatus struct {
	Enabled  bool     `json:"enabled"`
	Enforced bool     `json:"enforced"`
	Problems []string `json:"problems,omitempty"`
	// Blocked counts since the daemon started (check: since the chain was built).
	BlockedPackets uint64 `json:"blocked_packets"`
	BlockedBytes   uint64 `json:"blocked_bytes"`
	// Probe says what the kernel does with a new container's first packet
	// to IMDS, and by which rule.
	Probe string `json:"probe,omitempty"`
	Error string `json:"error,omitempty"`
	// NotApplicable says why the family cannot be blocked or reached
	// (a kernel without IPv6); then it counts as neither missing nor
	// enforced.
	NotApplicable string `json:"not_applicable,omitempty"`
}

// ECSStatus is what the ECS agent does, and will do, for awsvpc tasks.
type ECSStatus struct {
	// AWSVPCBlockIMDS is the effective value the ECS agent gets from the
	// config files when it (re)starts.
	AWSVPCBlockIMDS bool              `json:"awsvpc_block_imds"`
	Present         bool              `json:"ecs_present"`
	Mode            string            `json:"mode"`
	Config          *ecsconfig.Result `json:"config,omitempty"`
	// RunningAgent is the value inside the running ecs-agent container.
	RunningAgent  *ecsconfig.Result `json:"running_agent,omitempty"`
	RestartNeeded bool              `json:"restart_needed"`
	Wrote         bool              `json:"wrote_ecs_config,omitempty"`
	// WriteFailed: enforce mode could not write ECS_AWSVPC_BLOCK_IMDS=true.
	WriteFailed bool `json:"write_failed,omitempty"`
	// Error says why the newest read of the files failed; nothing is then
	// claimed (awsvpc_block_imds false, no restart_needed).
	Error string `json:"error,omitempty"`
	// ReadAt is when the files shown were read: the daemon reads them in
	// a loop of its own, on change and every resync interval.
	ReadAt time.Time `json:"read_at,omitzero"`
	// Stale: the newest read failed and config is the last good read's.
	Stale bool `json:"stale,omitempty"`
}

// DockerStatus says whether the container picture is known.
type DockerStatus struct {
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	// ListedAt is when the container list the sync used was asked for;
	// the daemon lists on Docker events and every resync interval.
	ListedAt time.Time `json:"listed_at,omitzero"`
	ListMS   float64   `json:"list_duration_ms,omitempty"`
}

// SyncSummary describes the daemon's last sync.
type SyncSummary struct {
	At         time.Time `json:"at"`
	DurationMS float64   `json:"duration_ms"`
	// StagesMS splits the duration, in the pass's order: docker,
	// containers (host-network cgroups and the desired state), ecs,
	// routes (reading the task namespaces), firewall, nftables, awsvpc
	// (their repairs), report.
	StagesMS map[string]float64 `json:"stages_ms,omitempty"`
	OK       bool               `json:"ok"`
	Error    string             `json:"error,omitempty"`
	// LastSuccess is when a sync last verified everything it could.
	LastSuccess time.Time `json:"last_success,omitzero"`
	// StaleAfterS is how old LastSuccess may be before the daemon is
	// unhealthy: three resync intervals, at least 15 s.
	StaleAfterS float64 `json:"stale_after_seconds,omitempty"`
}

// Exit codes of `check` and `status`.
const (
	ExitProtected = 0
	ExitNot       = 1 // degraded or exposed
	ExitError     = 2 // could not check, or no daemon answers
	ExitStale     = 3 // status: the daemon's last successful sync is stale
)

// ExitCode maps a status to `check`'s exit code: 0 protected, 1 otherwise.
func (s *Status) ExitCode() int {
	if s.Verdict == VerdictProtected {
		return ExitProtected
	}
	return ExitNot
}

// BlockInPlace says whether the bridge block is verified in every family
// that applies: what `apply` and the daemon's readiness wait for.
func (s *Status) BlockInPlace() bool {
	v6 := s.Firewall.IPv6
	return s.Firewall.IPv4.Enforced && (!v6.Enabled || v6.Enforced || v6.NotApplicable != "")
}

// Stale reports whether the daemon's status can no longer be taken as
// current, as of now, and why: its last sync finished longer ago than its
// bound (StaleAfterS; a hung loop still serves its last status), or it
// says protected while its last successful sync is that old. A status
// that already says degraded or exposed because syncs fail is current. A
// status without a sync yet says "starting" itself.
func (s *Status) Stale(now time.Time) (bool, string) {
	l := s.LastSync
	if l == nil {
		return false, ""
	}
	bound := time.Duration(l.StaleAfterS * float64(time.Second))
	if bound <= 0 {
		return false, ""
	}
	if age := now.Sub(l.At); age > bound {
		return true, fmt.Sprintf("the daemon's last sync was %s ago (bound %s)", age.Round(time.Second), bound)
	}
	if s.Verdict != VerdictProtected {
		return false, ""
	}
	if l.LastSuccess.IsZero() {
		return true, "protected is claimed, but no sync has verified everything yet"
	}
	if age := now.Sub(l.LastSuccess); age > bound {
		return true, fmt.Sprintf("protected is claimed, but the last successful sync was %s ago (bound %s)", age.Round(time.Second), bound)
	}
	return false, ""
}

// Health is /healthz's answer: fresh verification, not a live process.
func (s *Status) Health(now time.Time) (bool, string) {
	if s.LastSync == nil || s.LastSync.LastSuccess.IsZero() {
		return false, "no successful sync yet"
	}
	if !s.LastSync.OK {
		return false, "last sync failed: " + s.LastSync.Error
	}
	bound := time.Duration(s.LastSync.StaleAfterS * float64(time.Second))
	if age := now.Sub(s.LastSync.LastSuccess); bound > 0 && age > bound {
		return false, fmt.Sprintf("last successful sync %s ago", age.Round(time.Second))
	}
	return true, "ok"
}
