package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
	// DockerRoot, when set, is a Debian root (see DockerRoot) whose
	// dockerd, iptables and everything else StartProcess, HostCommand and
	// HostRun start are run from (RootExec); "" uses the machine's.
	DockerRoot string
	// Firewalld runs Debian's firewalld (FirewalldBackend: "nftables", the
	// default, or "iptables") on a private system bus before dockerd
	// starts (firewalld.go).
	Firewalld        bool
	FirewalldBackend string
	// Binds are host directories programs run from DockerRoot need to see
	// (e.g. the agent binary's); the sandbox directory always is.
	Binds []string
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
	dbus       *Process
	firewalld  *Process
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
	if opts.DockerRoot != "" && opts.Backend != BackendNFT {
		return nil, fmt.Errorf("sandbox: the docker roots run iptables-nft only, not %q", opts.Backend)
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
	if opts.DockerRoot != "" {
		if _, err := s.rootExec().Wrap(nil); err != nil {
			return nil, err
		}
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
	if opts.Firewalld {
		if err := s.startFirewalld(ctx); err != nil {
			return nil, err
		}
	}
	if !opts.NoDockerd {
		if err := s.StartDockerd(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Sandbox) logf(format string, args ...any) { s.opts.Logf(format, args...) }
