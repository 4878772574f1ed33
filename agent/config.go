package agent

import (
	"errors"
	"flag"
	"fmt"
	iofs "io/fs"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/firewall"
)

// ECS config modes, also the --awsvpc-mode values.
const (
	ECSModeCheck   = "check"
	ECSModeEnforce = "enforce"
)

// DefaultExemptLabel is empty: no container is exempt unless the operator
// says so. A workload must never be able to grant itself an exemption.
const DefaultExemptLabel = ""

// ExampleExemptLabel is the label the README suggests for --exempt-label.
const ExampleExemptLabel = "imdsguard.allow-imds=true"

// Config is everything the agent is told by flags or IMDSGUARD_* variables.
type Config struct {
	// ConfigFile is the settings file read under the flags and environment
	// (DefaultConfigFile unless --config or IMDSGUARD_CONFIG says otherwise).
	ConfigFile   string
	HostRoot     string
	DockerHost   string
	StatusSocket string
	// StatusGroup may read the status socket too (mode 0660); "" root only.
	StatusGroup     string
	MetricsAddr     string
	Action          firewall.Action
	IPv6            bool
	ECSConfigMode   string
	ResyncInterval  time.Duration
	IPTablesBackend string
	LogFormat       string
	LogLevel        string
	// AWSVPCMode is check (report each task's blackhole routes) or
	// enforce (add missing ones and repair deletions).
	AWSVPCMode string
	// BlockHostNetwork blocks IMDS for host-network containers by cgroup
	// (cgroup v2 only); the ECS agent and the host itself are never matched.
	BlockHostNetwork bool
	// ExemptLabel is "key=value" (or "key" for any value): containers
	// carrying it may reach IMDS.
	ExemptLabel string
	// ExemptTaskFamilies are ECS task definition families that may reach IMDS.
	ExemptTaskFamilies []string
	// AuditLog, when set, is a file of one JSON object per blocked attempt.
	AuditLog string
}

// DefaultStatusSocket is where `imdsguard status` finds the daemon.
const DefaultStatusSocket = "/run/imdsguard/status.sock"

// Flags a command reads besides --config; run reads them all. Each
// command accepts every settings flag (so one set can be passed to all of
// them, as the settings file is read by all) but its -h lists only these.
var (
	// OneShotFlags are what apply and check read: a pass's settings,
	// without the daemon's endpoints and period.
	OneShotFlags = []string{"host-root", "docker-host", "action", "ipv6", "ecs-config-mode", "iptables-backend",
		"log-format", "log-level", "awsvpc-mode", "block-host-network", "exempt-label", "exempt-task-family"}
	// StatusFlags are what status reads.
	StatusFlags = []string{"status-socket"}
	// RemoveFlags are what remove reads.
	RemoveFlags = []string{"status-socket", "iptables-backend", "log-format", "log-level"}
)

// Bind registers every settings flag on fs. Call Finish after fs.Parse.
func (c *Config) Bind(fs *flag.FlagSet) {
	dockerHost := os.Getenv("DOCKER_HOST")
	if dockerHost == "" {
		dockerHost = "unix:///var/run/docker.sock"
	}
	fs.StringVar(&c.ConfigFile, "config", DefaultConfigFile, "settings file of IMDSGUARD_* lines (the unit's EnvironmentFile); flags, then the environment, then this file")
	fs.StringVar(&c.HostRoot, "host-root", "/", "directory holding the host's /etc/ecs and /var/lib/ecs (the host's / when run in a container)")
	fs.StringVar(&c.DockerHost, "docker-host", dockerHost, "Docker daemon address")
	fs.StringVar(&c.StatusSocket, "status-socket", DefaultStatusSocket, "unix socket serving /status and /healthz (root only, unless --status-group)")
	fs.StringVar(&c.StatusGroup, "status-group", "", "group that may also read the status socket (mode 0660); empty: root only")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "127.0.0.1:9721", "address serving Prometheus /metrics; empty disables")
	fs.Func("action", "what IMDS-GUARD does with IMDS traffic: drop or reject (default drop)", func(s string) error {
		a, err := firewall.ParseAction(s)
		c.Action = a
		return err
	})
	c.Action = firewall.ActionDrop
	fs.BoolVar(&c.IPv6, "ipv6", true, "also block fd00:ec2::254 with ip6tables")
	fs.StringVar(&c.ECSConfigMode, "ecs-config-mode", ECSModeCheck, "check: report ECS_AWSVPC_BLOCK_IMDS; enforce: also write it to /etc/ecs/ecs.config")
	fs.DurationVar(&c.ResyncInterval, "resync-interval", 5*time.Second, "full resync period; the only drift detection on iptables-legacy")
	fs.StringVar(&c.IPTablesBackend, "iptables-backend", "auto", "iptables flavour: auto (follow Docker), nft or legacy")
	fs.StringVar(&c.LogFormat, "log-format", "auto", "auto (text on a terminal, JSON otherwise), text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.AWSVPCMode, "awsvpc-mode", ECSModeCheck, "check: report each awsvpc task's IMDS blackhole routes; enforce: also add missing ones and repair deletions")
	fs.BoolVar(&c.BlockHostNetwork, "block-host-network", false, "block IMDS for host-network containers by cgroup (cgroup v2 hosts); never the ECS agent or the host")
	fs.StringVar(&c.AuditLog, "audit-log", "", "file of one JSON object per blocked attempt to reach IMDS, for shipping (rotated to FILE.1 at 64 MiB); empty disables")
	fs.StringVar(&c.ExemptLabel, "exempt-label", DefaultExemptLabel, "containers with this label (key=value, or key for any value), set on the container itself and not inherited from its image, may reach IMDS; empty (the default) disables")
	fs.Func("exempt-task-family", "ECS task definition family whose containers may reach IMDS (repeatable, or comma-separated)", func(s string) error {
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				c.ExemptTaskFamilies = append(c.ExemptTaskFamilies, f)
			}
		}
		return nil
	})
}

// EnvName is the environment variable that sets a flag.
func EnvName(flagName string) string {
	return "IMDSGUARD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Finish fills in what the command line did not set, then checks the
// result. Precedence: flags, then IMDSGUARD_* environment variables, then the
// settings file (--config, else IMDSGUARD_CONFIG, else DefaultConfigFile),
// then defaults. The environment is over the file because under systemd it
// is the file plus the unit's own Environment= lines, which systemd lets win;
// so the daemon reads exactly what systemd gave it, and a shell with no
// IMDSGUARD_* variables reads the daemon's file. A missing default file is
// fine; a named one that is missing, and any unreadable or malformed file, is
// an error.
func (c *Config) Finish(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	file, err := c.settingsFile(set["config"], getenv)
	if err != nil {
		return err
	}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || f.Name == "config" {
			return
		}
		name := EnvName(f.Name)
		if v := getenv(name); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
			return
		}
		if s, ok := file[name]; ok {
			if err := fs.Set(f.Name, s.value); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q at %s:%d: %w", name, s.value, c.ConfigFile, s.line, err))
			}
		}
	})
	// dockerd's own variable, as the unit's environment would carry it.
	if s, ok := file["DOCKER_HOST"]; ok && !set["docker-host"] && getenv(EnvName("docker-host")) == "" &&
		file[EnvName("docker-host")].line == 0 && getenv("DOCKER_HOST") == "" {
		c.DockerHost = s.value
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.Validate()
}

// settingsFile reads the settings file and rejects IMDSGUARD_* names no flag
// has: a misspelt setting would otherwise be ignored by every command.
func (c *Config) settingsFile(flagged bool, getenv func(string) string) (map[string]envSetting, error) {
	named := flagged
	if !flagged {
		c.ConfigFile = DefaultConfigFile
		if v := getenv(EnvName("config")); v != "" {
			c.ConfigFile, named = v, true
		}
	}
	file, err := readEnvFile(c.ConfigFile)
	switch {
	case errors.Is(err, iofs.ErrNotExist) && !named:
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("settings file: %w", err)
	}
	known := map[string]bool{}
	var all Config
	scratch := flag.NewFlagSet("", flag.ContinueOnError)
	all.Bind(scratch)
	scratch.VisitAll(func(f *flag.Flag) { known[EnvName(f.Name)] = f.Name != "config" })
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(file)) {
		if strings.HasPrefix(k, "IMDSGUARD_") && !known[k] {
			errs = append(errs, fmt.Errorf("%s:%d: unknown setting %s", c.ConfigFile, file[k].line, k))
		}
	}
	return file, errors.Join(errs...)
}

// Validate checks values that flag parsing alone cannot.
func (c *Config) Validate() error {
	var errs []error
	if c.ECSConfigMode != ECSModeCheck && c.ECSConfigMode != ECSModeEnforce {
		errs = append(errs, fmt.Errorf("invalid --ecs-config-mode %q: want check or enforce", c.ECSConfigMode))
	}
	if c.AWSVPCMode != ECSModeCheck && c.AWSVPCMode != ECSModeEnforce {
		errs = append(errs, fmt.Errorf("invalid --awsvpc-mode %q: want check or enforce", c.AWSVPCMode))
	}
	if k, _, _ := strings.Cut(c.ExemptLabel, "="); c.ExemptLabel != "" && strings.TrimSpace(k) == "" {
		errs = append(errs, fmt.Errorf("invalid --exempt-label %q: want key=value or key", c.ExemptLabel))
	}
	if c.ResyncInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("--resync-interval %v is too short: at least 100ms", c.ResyncInterval))
	}
	switch c.IPTablesBackend {
	case "auto", "nft", "legacy":
	default:
		errs = append(errs, fmt.Errorf("invalid --iptables-backend %q: want auto, nft or legacy", c.IPTablesBackend))
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		errs = append(errs, fmt.Errorf("invalid --log-format %q: want auto, text or json", c.LogFormat))
	}
	if c.HostRoot == "" {
		errs = append(errs, errors.New("--host-root must not be empty"))
	}
	return errors.Join(errs...)
}

// Families lists the IP families the config enforces.
func (c *Config) Families() []firewall.Family {
	if c.IPv6 {
		return []firewall.Family{firewall.IPv4, firewall.IPv6}
	}
	return []firewall.Family{firewall.IPv4}
}
