package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/attempts"
	"github.com/imdsguard/imdsguard/ecsconfig"
	"github.com/imdsguard/imdsguard/firewall"
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
	Repairs  uint64       `json:"repairs"`
	LastSync *SyncSummary `json:"last_sync,omitempty"`
	Version  string       `json:"version"`
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
	// StagesMS splits the duration: firewall, docker, containers, ecs,
	// awsvpc, report.
	StagesMS map[string]float64 `json:"stages_ms,omitempty"`
	OK       bool               `json:"ok"`
	Error    string             `json:"error,omitempty"`
	// LastSuccess is when a sync last verified everything it could.
	LastSuccess time.Time `json:"last_success,omitzero"`
}

// familyStatus converts a firewall state.
func familyStatus(st firewall.FamilyState) FamilyStatus {
	fs := FamilyStatus{Enabled: true, Enforced: st.Enforced, BlockedPackets: st.Packets, BlockedBytes: st.Bytes}
	if st.Rules != nil {
		fs.Probe = st.Probe.String()
	}
	for _, p := range st.Problems {
		fs.Problems = append(fs.Problems, p.Detail)
	}
	if st.Err != nil {
		fs.Error = st.Err.Error()
	}
	return fs
}

// ExitCode maps a status to `check`'s exit code: 0 protected, 1 otherwise.
func (s *Status) ExitCode() int {
	if s.Verdict == VerdictProtected {
		return 0
	}
	return 1
}

// WriteText prints the status for a person: the verdict, then one line per
// container, so a whole host fits on one screen.
func (s *Status) WriteText(w io.Writer) {
	fmt.Fprintf(w, "imdsguard: %s\n", strings.ToUpper(s.Verdict))
	for _, r := range s.Reasons {
		fmt.Fprintf(w, "  ! %s\n", r)
	}
	fam := func(name string, f FamilyStatus) string {
		switch {
		case !f.Enabled:
			return name + " off"
		case f.Enforced:
			return fmt.Sprintf("%s enforced (%d packets blocked)", name, f.BlockedPackets)
		}
		return name + " NOT enforced"
	}
	fmt.Fprintf(w, "firewall: %s via iptables-%s; %s; %s\n", s.Firewall.Action, s.Firewall.Backend,
		fam("ipv4", s.Firewall.IPv4), fam("ipv6", s.Firewall.IPv6))
	if n := s.Firewall.NFTables; n != nil {
		n.writeText(w)
	}
	ecs := fmt.Sprintf("ECS_AWSVPC_BLOCK_IMDS=%v", s.ECSConfig.AWSVPCBlockIMDS)
	if s.ECSConfig.Config != nil {
		ecs += " (" + s.ECSConfig.Config.Reason + ")"
	}
	switch e := s.ECSConfig; {
	case e.Error != "" && e.Stale:
		ecs = fmt.Sprintf("UNREADABLE: %s; last good read %s", e.Error, e.ReadAt.Format(time.RFC3339))
	case e.Error != "":
		ecs = "UNREADABLE: " + e.Error
	case !e.Present:
		ecs = "no ECS configuration found"
	}
	if s.ECSConfig.RestartNeeded {
		ecs += "; the running ECS agent must be restarted to apply it"
	}
	fmt.Fprintf(w, "ecs: %s\n", ecs)
	if !s.Docker.Reachable {
		fmt.Fprintf(w, "docker: unreachable: %s\n", s.Docker.Error)
	}
	if s.AWSVPC != nil && len(s.AWSVPC.Tasks) > 0 {
		prot := 0
		for _, t := range s.AWSVPC.Tasks {
			if t.Protected {
				prot++
			}
		}
		fmt.Fprintf(w, "awsvpc: %s mode; %d of %d tasks have their blackhole routes\n", s.AWSVPC.Mode, prot, len(s.AWSVPC.Tasks))
	}
	if h := s.HostNetwork; h != nil && (h.Block || len(h.Containers) > 0) {
		fmt.Fprintf(w, "host network: blocking %s\n", h.Enforcement)
	}
	for _, e := range s.Exemptions {
		state := "exempt"
		if !e.Applied {
			state = "not exempt"
		}
		line := fmt.Sprintf("exemption: %s %s (%s)", e.Name, state, e.Why)
		if len(e.Addresses) > 0 {
			line += " for " + strings.Join(e.Addresses, ", ")
		}
		if len(e.Ports) > 0 {
			line += " by bridge port " + strings.Join(e.Ports, ", ")
		}
		if e.Note != "" {
			line += "; " + e.Note
		}
		fmt.Fprintln(w, line)
	}
	s.writeAttempts(w)
	if s.LastSync != nil {
		fmt.Fprintf(w, "last sync: %s, %.1f ms, repairs since start: %d\n",
			s.LastSync.At.Format(time.RFC3339), s.LastSync.DurationMS, s.Repairs)
	}
	if len(s.Containers) > 0 {
		fmt.Fprintf(w, "\n%-14s %-28s %-13s %-9s %s\n", "CONTAINER", "NAME", "NETWORK", "IMDS", "WHY")
		for _, c := range s.Containers {
			imds := "blocked"
			if !c.Protected {
				imds = "REACHABLE"
				if c.Expected {
					imds = "allowed"
				}
			}
			name := c.Name
			if c.ECSContainer != "" && c.ECSContainer != c.Name {
				name += " (" + c.ECSContainer + ")"
			}
			fmt.Fprintf(w, "%-14s %-28s %-13s %-9s %s\n", c.ID, trunc(name, 28), c.NetworkMode, imds, c.Reason)
		}
	}
}

func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

// serveStatus serves /status and /healthz on a unix socket only root can
// open: the status names every container and task on the host.
func serveStatus(path string, ep endpoint, h http.Handler, log *logrus.Entry) (func() error, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("status socket directory: %w", err)
	}
	// A socket left by a crashed daemon would make Listen fail; a live
	// daemon still answering on it means a second instance is starting.
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("another imdsguard daemon answers on %s", path)
	}
	_ = os.Remove(path)
	// Created with its final mode: between a listen and a chmod anyone
	// could connect. The umask is the process's, and nothing else creates
	// files while the daemon starts.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	stop := ep.serve(l, h, log)
	return func() error {
		err := stop()
		_ = os.Remove(path)
		return err
	}, nil
}

// serveHTTP serves until Shutdown; anything else that ends it is logged:
// the daemon keeps enforcing without its status or metrics endpoint.
func serveHTTP(srv *http.Server, l net.Listener, what string, log *logrus.Entry) {
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.WithError(err).Errorf("%s endpoint stopped", what)
	}
}

// ErrNoDaemon means nothing answers on the status socket.
var ErrNoDaemon = errors.New("no imdsguard daemon is running")

// QueryStatus asks the daemon on socket for its status.
func QueryStatus(ctx context.Context, socket string) (*Status, error) {
	hc := &http.Client{
		Timeout: 5 * time.Second,
		// One request per client: a kept-alive connection would hold one
		// of the socket's capped slots until the server's idle timeout.
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://imdsguard/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("%s is root's only (it lists every container and task): %w", socket, err)
		}
		if errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "connection refused") {
			return nil, fmt.Errorf("%w (%s: %v)", ErrNoDaemon, socket, err)
		}
		return nil, fmt.Errorf("asking the daemon on %s: %w", socket, err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("reading the daemon's status: %w", err)
	}
	return &st, nil
}
