package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
)

// DockerRootsDir is where `make docker-roots` builds the Debian roots with
// newer dockerd (one directory per suite, finished when .complete exists).
const DockerRootsDir = "/var/cache/imdsguard-docker"

// DockerVersions maps the e2e matrix's dockerd versions to the Debian
// suite whose docker.io provides them; "" is the machine's own dockerd.
var DockerVersions = map[string]string{
	"20.10": "", // Debian 12's docker.io, iptables 1.8.9
	"26":    "trixie",
	"28":    "sid",
}

// DockerRoot returns the root to pass as Options.DockerRoot for a version
// of the matrix: "" for the machine's dockerd, else the cached root, which
// must have been built by `make docker-roots`.
func DockerRoot(version string) (string, error) {
	suite, ok := DockerVersions[version]
	if !ok {
		return "", fmt.Errorf("sandbox: unknown docker version %q (have 20.10, 26, 28)", version)
	}
	if suite == "" {
		return "", nil
	}
	dir := filepath.Join(DockerRootsDir, suite)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return "", fmt.Errorf("sandbox: docker %s needs the %s root in %s (run `make docker-roots`): %w", version, suite, dir, err)
	}
	return dir, nil
}

// RootExec describes how to run a command with another Debian root as its
// filesystem, in the sandbox's host network namespace: the way the sandbox
// runs a newer dockerd, the agent next to it and the tests' iptables
// reads, so all three use the root's iptables.
//
// A chroot is not enough: runc inside a chroot gives containers the outer
// root. So the command gets a private mount namespace in which an overlay
// of the root (writes go to the sandbox directory, never to the shared
// cache) becomes / with pivot_root, with the sandbox directory and Binds
// at their own paths, the machine's /dev, a proc, a fresh sysfs (sysfs
// shows the network namespace it is mounted in, so the network namespace
// is entered first) and the machine's cgroup hierarchies. Every mount
// lives and dies with that namespace: nothing is left on the machine.
type RootExec struct {
	Root  string   // the Debian root (e.g. DockerRoot("28"))
	Dir   string   // the sandbox directory: bound in, and holds the overlay's upper layers
	NetNS string   // network namespace path to enter
	Binds []string // more host directories, visible at the same path
	// CgroupV2 mounts the unified hierarchy at /sys/fs/cgroup instead of
	// binding the machine's hierarchies (dockerd then needs
	// --exec-opt native.cgroupdriver=cgroupfs).
	CgroupV2 bool
}

var rootExecSeq atomic.Uint64

// Wrap returns the argv that runs argv under r (no fork between the
// launcher and the command: nsenter, unshare and sh all exec, so the pid
// of the started process is the command's).
func (r RootExec) Wrap(argv []string) ([]string, error) {
	if r.Root == "" || r.Dir == "" || r.NetNS == "" {
		return nil, errors.New("sandbox: RootExec needs Root, Dir and NetNS")
	}
	binds := append([]string{r.Dir}, r.Binds...)
	for _, b := range binds {
		if !filepath.IsAbs(b) || strings.ContainsAny(b, "'\n") {
			return nil, fmt.Errorf("sandbox: RootExec bind %q: want a plain absolute path", b)
		}
	}
	work := filepath.Join(r.Dir, "rootfs", fmt.Sprintf("%d", rootExecSeq.Add(1)))
	q := func(s string) string { return "'" + s + "'" }
	var sc strings.Builder
	fmt.Fprintf(&sc, "set -e\nW=%s\nmkdir -p \"$W/upper\" \"$W/work\" \"$W/m\"\n", q(work))
	fmt.Fprintf(&sc, "mount -t overlay overlay -o lowerdir=%s,upperdir=\"$W/upper\",workdir=\"$W/work\" \"$W/m\"\ncd \"$W/m\"\n", q(r.Root))
	for _, b := range binds {
		fmt.Fprintf(&sc, "mkdir -p .%[1]s && mount --bind %[1]s .%[1]s\n", q(b))
	}
	sc.WriteString("mount --rbind /dev dev\nmount -t proc proc proc\nmount -t tmpfs -o mode=755 tmpfs run\n")
	sc.WriteString("mount -t sysfs sysfs sys\n")
	if r.CgroupV2 {
		sc.WriteString("mount -t cgroup2 cgroup2 sys/fs/cgroup\n")
	} else {
		sc.WriteString("mount --rbind /sys/fs/cgroup sys/fs/cgroup\n")
	}
	// The root's /var/run is a link to /run; the old root goes away whole.
	sc.WriteString("mkdir -p .oldroot\npivot_root . .oldroot\ncd /\numount -l /.oldroot\nexec \"$@\"\n")
	out := []string{"nsenter", "--net=" + r.NetNS, "--", "unshare", "-m", "--propagation", "private", "--", "/bin/sh", "-c", sc.String(), "rootexec"}
	return append(out, argv...), nil
}
