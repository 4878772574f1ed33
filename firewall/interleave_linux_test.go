//go:build linux

package firewall

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netns"
)

// TestKernelDockerUserDeletedMidRepair is TestEnsureAnotherWriterBetween-
// ReadAndWrite's first case on the real iptables of both flavours: FORWARD
// and DOCKER-USER are flushed, and DOCKER-USER is deleted after the read and
// before the repair's write. The kernel must accept the repair that follows
// within the same Ensure, which never creates DOCKER-USER.
func TestKernelDockerUserDeletedMidRepair(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "legacy" {
				legacyPath(t)
			}
			inNewNetns(t, func() {
				b, err := DetectBackend(mode)
				if err != nil {
					t.Fatal(err)
				}
				m, err := NewManagerFor(b, Spec{Action: ActionDrop}, IPv4)
				if err != nil {
					t.Fatal(err)
				}
				ctx := context.Background()
				ipt := b.Binaries[IPv4]
				run := func(args ...string) {
					if out, err := exec.Command(ipt, args...).CombinedOutput(); err != nil {
						t.Fatalf("%s %v: %v %s", ipt, args, err, out)
					}
				}
				run("-N", DockerUser)
				run("-I", Forward, "-j", DockerUser)
				if _, err := m.Ensure(ctx); err != nil {
					t.Fatal(err)
				}
				run("-F", Forward)
				run("-F", DockerUser)
				m.tables[IPv4] = &beforeFirstRestore{Tables: m.tables[IPv4], fn: func() {
					run("-F", DockerUser)
					run("-X", DockerUser)
				}}
				states, err := m.Ensure(ctx)
				if err != nil || !states[0].Enforced {
					t.Fatalf("Ensure: enforced %v, %v", states[0].Enforced, err)
				}
				out, _ := exec.Command(saveName(ipt), "-t", Table).Output()
				for _, want := range []string{"-A FORWARD -j IMDS-GUARD\n", "-A IMDS-GUARD -d 169.254.169.254/32 -j DROP\n"} {
					if strings.Count(string(out), want) != 1 {
						t.Errorf("want one %q:\n%s", want, out)
					}
				}
				if strings.Contains(string(out), DockerUser) {
					t.Errorf("the repair created %s:\n%s", DockerUser, out)
				}
			})
		})
	}
}

// TestKernelDockerJumpInterleaved: Docker's EnsureJumpRule for its FORWARD
// jump (`-C FORWARD -j DOCKER-USER`, `-D` if there, `-I FORWARD -j
// DOCKER-USER`, three separate iptables calls) runs against Ensure after a
// wipe of FORWARD, the way both react to a firewalld reload or a dockerd
// restart: with Docker's check before Ensure and its insert after it, with
// Docker's check and insert between Ensure's read and its write, and both
// truly concurrent. After every round no chain may hold any rule twice. An
// imdsguard that writes Docker's rule too (as before issue 14) leaves two
// `-j DOCKER-USER` whenever Docker's check-then-insert straddles its
// read-then-insert, which no ordering of two such writers prevents.
func TestKernelDockerJumpInterleaved(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "legacy" {
				legacyPath(t)
			}
			inNewNetns(t, func() { dockerJumpInterleaved(t, mode) })
		})
	}
}

func dockerJumpInterleaved(t *testing.T, mode string) {
	ns, err := netns.Get()
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	defer ns.Close()
	b, err := DetectBackend(mode)
	if err != nil {
		t.Fatal(err)
	}
	families := []Family{IPv4, IPv6}
	ipt := func(f Family, args ...string) error {
		out, err := exec.Command(b.Binaries[f], append([]string{"-w"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %w %s", args, err, out)
		}
		return nil
	}
	jump := []string{Forward, "-j", DockerUser}
	// Docker's check, and its delete-then-insert, as separate steps.
	check := func(f Family) bool { return ipt(f, append([]string{"-C"}, jump...)...) == nil }
	insert := func(f Family, exists bool) {
		if exists {
			_ = ipt(f, append([]string{"-D"}, jump...)...) // gone since the check: nothing to delete
		}
		if err := ipt(f, append([]string{"-I"}, jump...)...); err != nil {
			t.Errorf("docker's insert: %v", err)
		}
	}
	for _, f := range families {
		for _, args := range [][]string{{"-N", DockerUser}, {"-A", DockerUser, "-j", "RETURN"}, append([]string{"-I"}, jump...)} {
			if err := ipt(f, args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	m, err := NewManagerFor(b, Spec{Action: ActionDrop}, families...)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := m.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	// inNS runs fn on a thread of its own in the test's namespace: the
	// thread is never returned to the pool.
	inNS := func(wg *sync.WaitGroup, fn func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			if err := netns.Set(ns); err != nil {
				t.Errorf("setns: %v", err)
				return
			}
			fn()
		}()
	}
	orig := m.tables
	const rounds = 10
	dups := 0
	for round := range 3 * rounds {
		for _, f := range families {
			if err := ipt(f, "-F", Forward); err != nil {
				t.Fatal(err)
			}
		}
		var how string
		switch round % 3 {
		case 0:
			how = "Docker's check before Ensure, its insert after"
			var seen [2]bool
			for i, f := range families {
				seen[i] = check(f)
			}
			if _, err := m.Ensure(ctx); err != nil {
				t.Logf("round %d: %v", round, err)
			}
			for i, f := range families {
				insert(f, seen[i])
			}
		case 1:
			how = "Docker's check and insert between Ensure's read and write"
			m.tables = map[Family]Tables{}
			for _, f := range families {
				m.tables[f] = &beforeFirstRestore{Tables: orig[f], fn: func() { insert(f, check(f)) }}
			}
			if _, err := m.Ensure(ctx); err != nil {
				t.Logf("round %d: %v", round, err)
			}
			m.tables = orig
		case 2:
			how = "Docker and Ensure concurrently"
			var wg sync.WaitGroup
			inNS(&wg, func() {
				for _, f := range families {
					insert(f, check(f))
				}
			})
			inNS(&wg, func() {
				if _, err := m.Ensure(ctx); err != nil {
					t.Logf("round %d: %v", round, err)
				}
			})
			wg.Wait()
		}
		for _, f := range families {
			out, err := exec.Command(saveName(b.Binaries[f]), "-t", Table).Output()
			if err != nil {
				t.Fatalf("save: %v", err)
			}
			if d := duplicateRules(out); len(d) > 0 {
				dups++
				t.Errorf("round %d (%s), %s: duplicates %q:\n%s", round, how, f, d, out)
			}
		}
	}
	if dups > 0 {
		t.Fatalf("%d of %d snapshots held a rule twice", dups, 3*rounds*len(families))
	}
	// Docker's last insert may have put its jump above ours: one more
	// Ensure, and every family is in place.
	states, err := m.Ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range states {
		if !st.Enforced {
			t.Errorf("%s not enforced: %+v", st.Family, st)
		}
	}
}

// duplicateRules returns every rule that iptables-save output holds more
// than once.
func duplicateRules(save []byte) []string {
	seen := map[string]int{}
	var dups []string
	for _, l := range strings.Split(string(save), "\n") {
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		if seen[l]++; seen[l] == 2 {
			dups = append(dups, l)
		}
	}
	return dups
}
