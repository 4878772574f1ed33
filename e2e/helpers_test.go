package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// leftovers reports processes, mounts and cgroups that still refer to a
// closed sandbox directory.
func leftovers(dir string) string {
	var b strings.Builder
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if c, err := os.ReadFile(p); err == nil && strings.Contains(string(c), dir) {
			fmt.Fprintf(&b, "process %s: %s\n", filepath.Base(filepath.Dir(p)), strings.ReplaceAll(string(c), "\x00", " "))
		}
	}
	if m, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(m), "\n") {
			if strings.Contains(l, dir) {
				fmt.Fprintf(&b, "mount: %s\n", l)
			}
		}
	}
	id := strings.SplitN(strings.TrimPrefix(filepath.Base(dir), "igsb-"), "-", 2)[0]
	cg, _ := filepath.Glob("/sys/fs/cgroup/*/igsb-" + id)
	for _, c := range cg {
		fmt.Fprintf(&b, "cgroup: %s\n", c)
	}
	return b.String()
}
