package sandbox

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Backend selects the iptables flavour dockerd (and the agent, via Env)
// sees in the host namespace.
type Backend string

const (
	BackendNFT    Backend = "nft"    // the machine's default iptables (iptables-nft)
	BackendLegacy Backend = "legacy" // iptables-legacy, put first on PATH
)

// Addresses inside the sandbox.
const (
	IMDSv4 = "169.254.169.254"
	IMDSv6 = "fd00:ec2::254"

	HostVethV4 = "169.254.100.1"
	IMDSVethV4 = "169.254.100.2"
	HostVethV6 = "fd00:ec2:1::1"
	IMDSVethV6 = "fd00:ec2:1::2"

	// DockerV6CIDR is dockerd's --fixed-cidr-v6 for the default bridge.
	DockerV6CIDR = "fd00:ec2:d0c::/64"

	// InstanceID is what the mock answers for /latest/meta-data/instance-id.
	InstanceID = "i-1234567890abcdef0"

	// Image is the busybox image imported into every sandbox daemon.
	Image = "imdsguard-e2e/busybox:latest"
)

// Neighbour is a link-local service next to IMDS that must stay reachable.
type Neighbour struct {
	Name string // also the line it answers, followed by "\n"
	Addr string
	Port int
}

// Neighbours are the responders in the IMDS namespace.
var Neighbours = []Neighbour{
	{"ecs-task-credentials", "169.254.170.2", 80},
	{"time-sync", "169.254.169.123", 80},
	{"dns", "169.254.169.253", 80},
	{"time-sync-v6", "fd00:ec2::23", 80},
	{"dns-v6", "fd00:ec2::253", 80},
}

// Options configure New.
type Options struct {
	Backend Backend // "" means BackendNFT
	// Logf receives progress lines (e.g. t.Logf); nil discards them.
	Logf func(format string, args ...any)
	// NoDockerd leaves dockerd stopped after New, e.g. to create
	// DOCKER-USER before dockerd starts; call StartDockerd later.
	NoDockerd bool
	// DockerdArgs are appended to dockerd's command line.
	DockerdArgs []string
	// MockArgs are appended to each ec2-metadata-mock command line.
	MockArgs []string
	// CgroupV2 runs dockerd and every process started in the host
	// namespace (StartProcess, HostCommand) in a private mount namespace
	// with the unified cgroup v2 hierarchy at /sys/fs/cgroup, so that on a
	// cgroup v1 or hybrid machine Docker (cgroupfs driver) gives each
	// container a cgroup v2 group of its own, as on a cgroup v2 host.
	CgroupV2 bool
}

// Sandbox is one simulated container instance. Its methods are safe for
// concurrent use except Close, Start/Stop/RestartDockerd.
type Sandbox struct {
	ID            string // random hex suffix
	Dir           string // everything on disk lives here
	Backend       Backend
	HostNS        string // e.g. "igh-1a2b3c"
	IMDSNS        string // e.g. "igi-1a2b3c"
	HostNetNSPath string // "/var/run/netns/igh-1a2b3c"
	IMDSNetNSPath string
	DockerHost    string // "unix:///.../docker.sock"
	CgroupParent  string // dockerd --cgroup-parent

	opts      Options
	legacyDir string
	dockerCLI string

	mu         sync.Mutex
	dockerd    *Process
	mocks      []*Process
	procs      []*Process
	listeners  []net.Listener
	imageReady bool

	closeOnce sync.Once
	closeErr  error
}

// ErrNotRoot is returned by New when not running as root.
var ErrNotRoot = errors.New("sandbox: needs root (network namespaces, dockerd)")

const ownerFile = "owner.pid"

// New builds a sandbox. On error everything it created is removed again.
func New(ctx context.Context, opts Options) (_ *Sandbox, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if opts.Backend == "" {
		opts.Backend = BackendNFT
	}
	if opts.Backend != BackendNFT && opts.Backend != BackendLegacy {
		return nil, fmt.Errorf("sandbox: unknown backend %q", opts.Backend)
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	mock, err := MockBinary()
	if err != nil {
		return nil, err
	}
	sweepStale(opts.Logf)

	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(b)
	dir, err := os.MkdirTemp("", "igsb-"+id+"-")
	if err != nil {
		return nil, err
	}
	s := &Sandbox{
		ID:            id,
		Dir:           dir,
		Backend:       opts.Backend,
		HostNS:        "igh-" + id,
		IMDSNS:        "igi-" + id,
		HostNetNSPath: filepath.Join(netnsDir, "igh-"+id),
		IMDSNetNSPath: filepath.Join(netnsDir, "igi-"+id),
		DockerHost:    "unix://" + filepath.Join(dir, "docker.sock"),
		CgroupParent:  "igsb-" + id,
		opts:          opts,
	}
	defer func() {
		if err != nil {
			if cerr := s.Close(); cerr != nil {
				s.logf("cleanup after failed New: %v", cerr)
			}
		}
	}()
	// Lets a later run sweep this sandbox if the test binary is killed.
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(ownerStamp(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	if s.dockerCLI, err = exec.LookPath("docker"); err != nil {
		return nil, fmt.Errorf("sandbox: docker CLI: %w", err)
	}
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		s.dockerCLI = "/usr/bin/docker" // docker.io's client matches its daemon
	}
	if opts.Backend == BackendLegacy {
		if err := s.makeLegacyDir(); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	if err := s.setupNetwork(ctx); err != nil {
		return nil, fmt.Errorf("sandbox: network: %w", err)
	}
	s.logf("sandbox %s: namespaces up in %v", id, time.Since(start).Round(time.Millisecond))
	if err := s.startIMDS(ctx, mock); err != nil {
		return nil, fmt.Errorf("sandbox: IMDS: %w", err)
	}
	s.logf("sandbox %s: IMDS up in %v", id, time.Since(start).Round(time.Millisecond))
	if !opts.NoDockerd {
		if err := s.StartDockerd(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Sandbox) logf(format string, args ...any) { s.opts.Logf(format, args...) }

// MockBinary locates ec2-metadata-mock: $IMDSGUARD_E2E_MOCK, then
// .tools/bin under the module root, then PATH.
func MockBinary() (string, error) {
	if p := os.Getenv("IMDSGUARD_E2E_MOCK"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("sandbox: IMDSGUARD_E2E_MOCK: %w", err)
		}
		return p, nil
	}
	if root, err := moduleRoot(); err == nil {
		p := filepath.Join(root, ".tools", "bin", "ec2-metadata-mock")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("ec2-metadata-mock"); err == nil {
		return p, nil
	}
	return "", errors.New("sandbox: ec2-metadata-mock not found (run `make tools`, or set IMDSGUARD_E2E_MOCK)")
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/imdsguard/imdsguard\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root not found")
		}
		dir = parent
	}
}

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
// PATH starts with the legacy iptables directory for BackendLegacy, and
// DOCKER_HOST points at the sandbox daemon.
func (s *Sandbox) Env() []string {
	var env []string
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH":
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
		// Keep the CLI away from ~/.docker (credential helpers, contexts).
		"DOCKER_CONFIG="+filepath.Join(s.Dir, "docker-config"),
	)
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
	name, args = s.withCgroupV2(name, args)
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + s.HostNetNSPath, "--", name}, args...)...)
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

func (s *Sandbox) setupNetwork(ctx context.Context) error {
	h, i := s.HostNS, s.IMDSNS
	steps := [][]string{
		{"ip", "netns", "add", h},
		{"ip", "netns", "add", i},
		{"ip", "-n", h, "link", "set", "lo", "up"},
		{"ip", "-n", i, "link", "set", "lo", "up"},
		// Created inside the host namespace: the names never exist in the
		// root namespace, so concurrent sandboxes cannot collide.
		{"ip", "-n", h, "link", "add", "hv0", "type", "veth", "peer", "name", "iv0", "netns", i},
		{"ip", "-n", h, "addr", "add", HostVethV4 + "/30", "dev", "hv0"},
		{"ip", "-n", h, "addr", "add", HostVethV6 + "/64", "dev", "hv0", "nodad"},
		{"ip", "-n", i, "addr", "add", IMDSVethV4 + "/30", "dev", "iv0"},
		{"ip", "-n", i, "addr", "add", IMDSVethV6 + "/64", "dev", "iv0", "nodad"},
		{"ip", "-n", h, "link", "set", "hv0", "up"},
		{"ip", "-n", i, "link", "set", "iv0", "up"},
		{"ip", "-n", i, "addr", "add", IMDSv4 + "/32", "dev", "lo"},
		{"ip", "-n", i, "addr", "add", IMDSv6 + "/128", "dev", "lo"},
	}
	for _, n := range Neighbours {
		plen := "/32"
		if strings.Contains(n.Addr, ":") {
			plen = "/128"
		}
		steps = append(steps, []string{"ip", "-n", i, "addr", "add", n.Addr + plen, "dev", "lo"})
	}
	steps = append(steps,
		[]string{"ip", "-n", h, "route", "add", "default", "via", IMDSVethV4, "dev", "hv0"},
		[]string{"ip", "-n", h, "-6", "route", "add", "default", "via", IMDSVethV6, "dev", "hv0"},
		// Docker masquerades IPv4 but routes IPv6, so replies need a way back.
		[]string{"ip", "-n", i, "route", "add", "default", "via", HostVethV4, "dev", "iv0"},
		[]string{"ip", "-n", i, "-6", "route", "add", "default", "via", HostVethV6, "dev", "iv0"},
	)
	for _, st := range steps {
		if err := run(ctx, st[0], st[1:]...); err != nil {
			return err
		}
	}
	if _, err := nsRun(ctx, s.HostNetNSPath, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return err
	}
	return nil
}

func (s *Sandbox) startIMDS(ctx context.Context, mock string) error {
	env := append(os.Environ(), "HOME="+s.Dir) // mock reads $HOME/aemm-config.json
	for _, m := range []struct{ name, host, addr string }{
		{"imds-mock-v4", IMDSv4, IMDSv4},
		{"imds-mock-v6", "[" + IMDSv6 + "]", IMDSv6},
	} {
		args := append([]string{"--hostname", m.host, "--port", "80"}, s.opts.MockArgs...)
		p, err := startIn(s.Dir, s.IMDSNetNSPath, m.name, mock, args, env)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.mocks = append(s.mocks, p)
		s.mu.Unlock()
		if err := waitListening(ctx, s.IMDSNetNSPath, m.addr, 80, p); err != nil {
			return fmt.Errorf("%s: %w\n%s", m.name, err, p.Log())
		}
	}
	for _, n := range Neighbours {
		l, err := listenIn(s.IMDSNetNSPath, net.JoinHostPort(n.Addr, strconv.Itoa(n.Port)))
		if err != nil {
			return fmt.Errorf("neighbour %s: %w", n.Name, err)
		}
		s.mu.Lock()
		s.listeners = append(s.listeners, l)
		s.mu.Unlock()
		go serveLine(l, n.Name+"\n")
	}
	return nil
}

func serveLine(l net.Listener, line string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(c, line)
		}()
	}
}

// waitListening dials addr:port inside nsPath until it accepts, p exits,
// or 15s pass.
func waitListening(ctx context.Context, nsPath, addr string, port int, p *Process) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		c, err := dialIn(dctx, nsPath, addr, port)
		dcancel()
		if err == nil {
			c.Close()
			return nil
		}
		if p != nil {
			if done, werr := p.Exited(); done {
				return fmt.Errorf("exited: %v", werr)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not listening on %s:%d: %w (last: %v)", addr, port, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StartProcess runs bin in the host namespace with Env; its output goes to
// Dir/name.log. Close stops it (SIGTERM, then SIGKILL after 5s).
func (s *Sandbox) StartProcess(name string, bin string, args ...string) (*Process, error) {
	bin, args = s.withCgroupV2(bin, args)
	p, err := startIn(s.Dir, s.HostNetNSPath, name, bin, args, s.Env())
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

// Close tears everything down. It is idempotent and safe after a partial
// New; errors are joined, and every step runs regardless.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Sandbox) close() error {
	start := time.Now()
	var errs []error
	s.mu.Lock()
	procs := append([]*Process(nil), s.procs...)
	mocks := append([]*Process(nil), s.mocks...)
	ls := append([]net.Listener(nil), s.listeners...)
	s.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		errs = append(errs, procs[i].Stop(5*time.Second))
	}
	// dockerd stops its containers itself (--init makes that quick).
	errs = append(errs, s.StopDockerd())
	for _, m := range mocks {
		errs = append(errs, m.Stop(2*time.Second))
	}
	for _, l := range ls {
		l.Close()
	}
	errs = append(errs, cleanupResources(s.Dir, []string{s.HostNS, s.IMDSNS}, s.CgroupParent))
	s.logf("sandbox %s: closed in %v", s.ID, time.Since(start).Round(time.Millisecond))
	return errors.Join(errs...)
}

// cleanupResources is the part of Close that needs no live state, shared
// with the sweeper for sandboxes of killed test binaries.
func cleanupResources(dir string, namespaces []string, cgroupParent string) error {
	var errs []error
	// Stragglers: anything still running in our namespaces or naming our
	// directory (containerd, shims), then container processes by cgroup.
	var pids []int
	for _, ns := range namespaces {
		pids = append(pids, pidsInNetNS(filepath.Join(netnsDir, ns))...)
	}
	if dir != "" {
		pids = append(pids, pidsMentioning(dir)...)
	}
	if len(pids) > 0 {
		errs = append(errs, killPids(pids))
	}
	errs = append(errs, removeCgroupParent(cgroupParent))
	for _, ns := range namespaces {
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); err == nil {
			if err := run(context.Background(), "ip", "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if dir != "" {
		errs = append(errs, unmountUnder(dir))
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ownerStamp identifies a process across pid reuse (pid + start time).
func ownerStamp(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	st := string(b)
	if i := strings.LastIndexByte(st, ')'); i >= 0 {
		f := strings.Fields(st[i+1:])
		if len(f) > 19 {
			return fmt.Sprintf("%d %s", pid, f[19])
		}
	}
	return strconv.Itoa(pid)
}

// sweepStale removes sandboxes whose owning test binary is gone (killed by
// a test timeout, which skips t.Cleanup).
func sweepStale(logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "igsb-*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not ours, or still being created
		}
		stamp := strings.TrimSpace(string(b))
		pidStr, _, _ := strings.Cut(stamp, " ")
		pid, _ := strconv.Atoi(pidStr)
		if pid > 0 && ownerStamp(pid) == stamp {
			continue // owner alive
		}
		id := strings.SplitN(strings.TrimPrefix(filepath.Base(dir), "igsb-"), "-", 2)[0]
		logf("sandbox: sweeping stale sandbox %s", dir)
		if err := cleanupResources(dir, []string{"igh-" + id, "igi-" + id}, "igsb-"+id); err != nil {
			logf("sandbox: sweeping %s: %v", dir, err)
		}
	}
}
