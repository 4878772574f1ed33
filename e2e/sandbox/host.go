package sandbox

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

var legacyTools = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

func (s *Sandbox) makeLegacyDir() error {
	s.legacyDir = filepath.Join(s.Dir, "legacy-bin")
	if err := os.Mkdir(s.legacyDir, 0o755); err != nil {
		return err
	}
	for _, name := range legacyTools {
		i := strings.IndexByte(name, '-')
		target := name + "-legacy"
		if i > 0 { // iptables-save -> iptables-legacy-save
			target = name[:i] + "-legacy" + name[i:]
		}
		p, err := exec.LookPath(target)
		if err != nil {
			return fmt.Errorf("sandbox: %s: %w", target, err)
		}
		if err := os.Symlink(p, filepath.Join(s.legacyDir, name)); err != nil {
			return err
		}
	}
	return nil
}

// Env is the environment for programs that run in the host namespace:
// PATH starts with the legacy iptables directory for BackendLegacy,
// DOCKER_HOST points at the sandbox daemon, and DBUS_SYSTEM_BUS_ADDRESS at
// the sandbox's private bus (which exists only with Options.Firewalld).
func (s *Sandbox) Env() []string {
	var env []string
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH", "DBUS_SYSTEM_BUS_ADDRESS", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH":
			continue
		}
		env = append(env, kv)
	}
	if s.legacyDir != "" {
		path = s.legacyDir + ":" + path
	}
	return append(env,
		"PATH="+path,
		"DOCKER_HOST="+s.DockerHost,
		"DBUS_SYSTEM_BUS_ADDRESS="+s.busAddress(),
		// Keep the CLI away from ~/.docker (credential helpers, contexts).
		"DOCKER_CONFIG="+filepath.Join(s.Dir, "docker-config"),
	)
}

// hostArgv is the command line that runs name in the host namespace, from
// Options.DockerRoot when set.
func (s *Sandbox) hostArgv(name string, args ...string) []string {
	argv := append([]string{name}, args...)
	if s.opts.DockerRoot == "" {
		name, args = s.withCgroupV2(name, args)
		return append([]string{"nsenter", "--net=" + s.HostNetNSPath, "--", name}, args...)
	}
	w, err := s.rootExec().Wrap(argv)
	if err != nil { // New checked the options; a failure here is a bug
		panic(err)
	}
	return w
}

func (s *Sandbox) rootExec() RootExec {
	return RootExec{Root: s.opts.DockerRoot, Dir: s.Dir, NetNS: s.HostNetNSPath, Binds: s.opts.Binds, CgroupV2: s.opts.CgroupV2}
}

// withCgroupV2 wraps a command line for the host namespace's processes: with
// Options.CgroupV2 it runs in a mount namespace of its own (private, so
// nothing propagates to the machine and it vanishes with its processes)
// where cgroup2 is mounted over /sys/fs/cgroup. Every process so started
// sees the same hierarchy: there is one cgroup2 hierarchy per kernel. Each
// step execs, so the pid is the program's.
func (s *Sandbox) withCgroupV2(bin string, args []string) (string, []string) {
	if !s.opts.CgroupV2 {
		return bin, args
	}
	return "unshare", append([]string{"--mount", "--propagation", "private", "--",
		"sh", "-c", `mount -t cgroup2 none /sys/fs/cgroup && exec "$0" "$@"`, bin}, args...)
}

// HostCommand prepares name to run in the host namespace with Env.
func (s *Sandbox) HostCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := s.hostArgv(name, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = s.Env()
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// HostRun runs a short command in the host namespace (30s limit) and
// returns its combined output.
func (s *Sandbox) HostRun(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := s.HostCommand(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("host: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// IMDSRun runs a short command in the IMDS namespace.
func (s *Sandbox) IMDSRun(name string, args ...string) (string, error) {
	return nsRun(context.Background(), s.IMDSNetNSPath, name, args...)
}

func nsRun(ctx context.Context, nsPath, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + nsPath, "--", name}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// StartProcess runs bin in the host namespace with Env; its output goes to
// Dir/name.log. Close stops it (SIGTERM, then SIGKILL after 5s).
func (s *Sandbox) StartProcess(name string, bin string, args ...string) (*Process, error) {
	p, err := startArgv(s.Dir, name, s.hostArgv(bin, args...), s.Env())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p, nil
}

// ProbeFromHost dials addr:port from the host namespace itself (where the
// agent and the ECS agent run). See Probe for the errors.
func (s *Sandbox) ProbeFromHost(addr string, port int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dialIn(ctx, s.HostNetNSPath, addr, port)
	if err != nil {
		return classify(err.Error(), ctx.Err() != nil)
	}
	c.Close()
	return nil
}

// ReadFromHost connects from the host namespace and returns the first line
// the peer sends (what a neighbour responder answers).
func (s *Sandbox) ReadFromHost(addr string, port int, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dialIn(ctx, s.HostNetNSPath, addr, port)
	if err != nil {
		return "", classify(err.Error(), ctx.Err() != nil)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}
