package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

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
	errs = append(errs, s.stopBus())
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
