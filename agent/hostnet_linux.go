//go:build linux

package agent

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// realSystem is System on the machine the agent runs on.
type realSystem struct{}

// cgroupRoot is where a unified cgroup v2 hierarchy is mounted. On a hybrid
// host cgroup2 sits at /sys/fs/cgroup/unified without controllers, and
// Docker puts containers in v1 groups only: their v2 path is their
// parent's, which could not tell them from the host.
const cgroupRoot = "/sys/fs/cgroup"

func (realSystem) CgroupV2Unified() error {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil {
		return fmt.Errorf("cgroup v2 is not available: %w", err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("cgroup v2 is not the unified hierarchy (%s is not cgroup2)", cgroupRoot)
	}
	return nil
}

func (realSystem) ReadFile(path string) ([]byte, error) { return os.ReadFile(path) }

func (realSystem) CgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(cgroupRoot, path), &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}
