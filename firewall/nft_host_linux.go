//go:build linux

package firewall

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// cgroupv2Root finds where the cgroup v2 hierarchy is mounted:
// /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one.
//
// /sys/fs/cgroup wins over any other cgroup2 mount, and the last mount
// there over earlier ones (it covers them): that is where the paths in
// /proc/PID/cgroup resolve, as layer 2's host chain reads them.
func cgroupv2Root() (string, error) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "", err
	}
	root := ""
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[2] == "cgroup2" {
			if f[1] == "/sys/fs/cgroup" || root == "" {
				root = f[1]
			}
		}
	}
	if root == "" {
		return "", errors.New("no cgroup v2 hierarchy is mounted")
	}
	return root, nil
}

// statCgroupID resolves a cgroup v2 path to the id the kernel gives it: the
// inode number of its directory, as `nft` does for `socket cgroupv2`.
func statCgroupID(path string) (uint64, error) {
	root, err := cgroupv2Root()
	if err != nil {
		return 0, err
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(root, path), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// DockerNFTables reports whether Docker's nftables firewall backend (Docker
// 29+, `"firewall-backend": "nftables"`) has its tables in the caller's
// namespace: `ip docker-bridges`. That backend has no DOCKER-USER; its
// documentation sends users to a table of their own with base chains on
// the same hooks, which is layer 1.
func DockerNFTables() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("listing nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == "docker-bridges" {
			return true, nil
		}
	}
	return false, nil
}
