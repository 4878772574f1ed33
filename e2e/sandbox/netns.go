package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

const netnsDir = "/var/run/netns"

// inNetNS runs fn on an OS thread switched into the namespace at path.
// Sockets created by fn stay in that namespace after the thread switches
// back. If the thread cannot be restored it stays locked, so the runtime
// discards it instead of reusing a thread in the wrong namespace.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return // thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// listenIn opens a TCP listener inside the namespace at path.
func listenIn(path, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetNS(path, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// dialIn connects from inside the namespace at path. Only IP literals are
// accepted so no resolver goroutine can run outside the namespace.
func dialIn(ctx context.Context, path, addr string, port int) (net.Conn, error) {
	ip := net.ParseIP(strings.Trim(addr, "[]"))
	if ip == nil {
		return nil, fmt.Errorf("dial %q: not an IP literal", addr)
	}
	var c net.Conn
	err := inNetNS(path, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
		return err
	})
	return c, err
}

// pidsInNetNS lists processes whose network namespace is the one at path.
// It returns nothing unless path really is a namespace (a half-created
// netns file is a plain tmpfs inode, whose number could match the root
// namespace's) and differs from the caller's own namespace.
func pidsInNetNS(path string) []int {
	var st, self syscall.Stat_t
	if syscall.Stat(path, &st) != nil || syscall.Stat("/proc/self/ns/net", &self) != nil {
		return nil
	}
	if st.Dev != self.Dev || st.Ino == self.Ino {
		return nil
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	var pids []int
	for _, pid := range allPids() {
		if pid == 1 || pid == os.Getpid() {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && l == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidsMentioning lists processes whose command line contains s (the
// sandbox directory): dockerd, containerd and the shims, which daemonize
// away from dockerd's process tree.
func pidsMentioning(s string) []int {
	var pids []int
	self := os.Getpid()
	for _, pid := range allPids() {
		if pid == self || pid == 1 {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func allPids() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	// A zombie still answers kill(0); treat it as gone.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
		return false
	}
	return true
}

// killPids sends SIGKILL and waits briefly for the pids to disappear.
func killPids(pids []int) error {
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range pids {
		for pidAlive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if pidAlive(p) {
			return fmt.Errorf("pid %d survived SIGKILL", p)
		}
	}
	return nil
}

// unmountUnder lazily unmounts every mount point below dir, deepest first
// (dockerd leaves overlay and netns bind mounts when it dies uncleanly).
func unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	var errs []error
	for i := len(mps) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mps[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mps[i], err))
		}
	}
	return errors.Join(errs...)
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeCgroupParent removes the per-sandbox cgroup parent from every
// mounted hierarchy, killing anything still inside (container processes
// whose shim died).
func removeCgroupParent(parent string) error {
	if parent == "" {
		return nil
	}
	var dirs []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + parent)
	if st, err := os.Stat("/sys/fs/cgroup/" + parent); err == nil && st.IsDir() {
		roots = append(roots, "/sys/fs/cgroup/"+parent)
	}
	for _, r := range roots {
		_ = filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	var pids []int
	for _, d := range dirs {
		b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				pids = append(pids, p)
			}
		}
	}
	var errs []error
	if len(pids) > 0 {
		errs = append(errs, killPids(pids))
	}
	for i := len(dirs) - 1; i >= 0; i-- { // children after parents in walk order
		if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
