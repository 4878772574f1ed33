//go:build linux

package firewall

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// inNewNetns runs fn on a thread moved into a fresh network namespace, so the
// iptables processes it starts see only that namespace's tables.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and runs iptables")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread is left locked and dies with the goroutine, so it never
		// returns to the pool in the wrong namespace.
		runtime.LockOSThread()
		ns, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer ns.Close()
		fn()
	}()
	<-done
}

// legacyPath puts iptables* names linked to the -legacy binaries first on
// PATH, the way an iptables-legacy host looks to dockerd and the agent.
func legacyPath(t *testing.T) {
	dir := t.TempDir()
	for _, base := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			target, err := exec.LookPath(base + "-legacy" + suffix)
			if err != nil {
				t.Skipf("iptables-legacy not installed: %v", err)
			}
			if err := os.Symlink(target, filepath.Join(dir, base+suffix)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

func TestKernelBackends(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "legacy" {
				legacyPath(t)
			}
			for _, action := range []Action{ActionDrop, ActionReject} {
				inNewNetns(t, func() { kernelRoundTrip(t, mode, action) })
			}
		})
	}
}

func kernelRoundTrip(t *testing.T, mode string, action Action) {
	b, err := DetectBackend("auto")
	if err != nil {
		t.Fatalf("detect: %v", err)
	}
	if b.Mode != mode {
		t.Fatalf("detected %s (%s), want %s", b.Mode, b.Why, mode)
	}
	m, err := NewManagerFor(b, Spec{Action: action}, IPv4, IPv6)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	states, err := m.Ensure(ctx)
	if err != nil {
		t.Fatalf("ensure: %v", err)
	}
	for _, st := range states {
		if !st.Enforced {
			t.Fatalf("%s not enforced: %v", st.Family, st.Problems)
		}
	}
	// The kernel prints our rules exactly as we render them: a steady state
	// finds nothing to repair.
	start := time.Now()
	states, err = m.Ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s/%s steady-state Ensure of both families: %v", mode, action, time.Since(start))
	for _, st := range states {
		if len(st.Problems) != 0 {
			t.Fatalf("%s: steady state reports %v", st.Family, st.Problems)
		}
	}
	// Drift: flush DOCKER-USER with the real binary.
	if out, err := exec.Command(b.Binaries[IPv4], "-F", DockerUser).CombinedOutput(); err != nil {
		t.Fatalf("flush: %v %s", err, out)
	}
	states, _ = m.Check(ctx)
	if states[0].Enforced {
		t.Fatal("check did not see the flush")
	}
	if states, err = m.Ensure(ctx); err != nil || !states[0].Enforced {
		t.Fatalf("repair: %v %+v", err, states[0])
	}
	if err := m.Remove(ctx); err != nil {
		t.Fatalf("remove: %v", err)
	}
	out, _ := exec.Command(saveName(b.Binaries[IPv4]), "-t", Table).Output()
	if strings.Contains(string(out), Chain) {
		t.Fatalf("after remove:\n%s", out)
	}
	if !strings.Contains(string(out), ":"+DockerUser) {
		t.Fatalf("remove deleted DOCKER-USER:\n%s", out)
	}
}
