package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
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

// dockerVersions is the e2e matrix's dockerd versions:
// $IMDSGUARD_E2E_DOCKER (a comma list; `make test DOCKER=28`), else all.
// A newer version whose root `make docker-roots` has not built is skipped
// when not asked for by name, and fails the test when it is.
func dockerVersions() (versions []string, explicit bool) {
	if v := os.Getenv("IMDSGUARD_E2E_DOCKER"); v != "" {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				versions = append(versions, f)
			}
		}
		return versions, true
	}
	return []string{"20.10", "26", "28"}, false
}

// forEachBackend runs test on every dockerd of the matrix: on 20.10 (the
// machine's) with iptables-nft and iptables-legacy, on 26 and 28 (Debian
// roots, e2e/sandbox RootExec) with iptables-nft. Subtests are named
// docker<version>/<backend>, e.g. -run 'TestAgent/docker28/nft'.
func forEachBackend(t *testing.T, test func(*testing.T, sandbox.Options)) {
	forMatrix(t, true, test)
}

// forEachDocker is forEachBackend on iptables-nft only.
func forEachDocker(t *testing.T, test func(*testing.T, sandbox.Options)) {
	forMatrix(t, false, test)
}

func forMatrix(t *testing.T, legacy bool, test func(*testing.T, sandbox.Options)) {
	versions, explicit := dockerVersions()
	for _, v := range versions {
		t.Run("docker"+v, func(t *testing.T) {
			root, err := sandbox.DockerRoot(v)
			if err != nil {
				if !explicit && errors.Is(err, os.ErrNotExist) {
					t.Skip(err)
				}
				t.Fatal(err)
			}
			backends := []sandbox.Backend{sandbox.BackendNFT}
			if legacy && root == "" {
				backends = append(backends, sandbox.BackendLegacy)
			}
			for _, b := range backends {
				t.Run(string(b), func(t *testing.T) { test(t, sandbox.Options{Backend: b, DockerRoot: root}) })
			}
		})
	}
}
