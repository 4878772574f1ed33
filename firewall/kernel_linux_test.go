//go:build linux

package firewall

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// inNewNetns runs fn on a thread moved into a fresh network namespace, so the
// iptables processes it starts see only that namespace's tables. fn runs on
// the test's own goroutine, so it may call t.Fatal: the deferred switch back
// still runs. Should the switch back fail, the thread stays locked and dies
// with the test's goroutine, so it never returns to the pool in the wrong
// namespace.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and runs iptables")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		t.Fatalf("new netns: %v", err)
	}
	defer ns.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("back to the original network namespace: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
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
	// Docker's chain and its jump, as dockerd leaves them.
	for _, f := range []Family{IPv4, IPv6} {
		for _, args := range [][]string{{"-N", DockerUser}, {"-I", Forward, "-j", DockerUser}} {
			if out, err := exec.Command(b.Binaries[f], args...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v %s", args, err, out)
			}
		}
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
	// Drift: flush FORWARD with the real binary.
	if out, err := exec.Command(b.Binaries[IPv4], "-F", Forward).CombinedOutput(); err != nil {
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
	out, _ = exec.Command(saveName(b.Binaries[IPv6]), "-t", Table).Output()
	if strings.Contains(string(out), Chain) || !strings.Contains(string(out), "-A FORWARD -j DOCKER-USER\n") {
		t.Fatalf("after remove, ipv6 (Docker's jump stays, nothing of ours):\n%s", out)
	}
}

// TestKernelSpec checks that exemptions and host-network cgroup rules read
// back exactly as rendered on both flavours, and that the cgroup match
// drops IMDS traffic from a process in the cgroup and nothing else.
func TestKernelSpec(t *testing.T) {
	root := cgroup2Mount(t)
	cg := "/imdsguard-test-" + strconv.Itoa(os.Getpid())
	dir := filepath.Join(root, cg)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup v2 group under %s: %v", root, err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "legacy" {
				legacyPath(t)
			}
			for _, action := range []Action{ActionDrop, ActionReject} {
				inNewNetns(t, func() { kernelSpec(t, mode, action, dir, cg) })
			}
		})
	}
}

func kernelSpec(t *testing.T, mode string, action Action, dir, cg string) {
	b, err := DetectBackend(mode)
	if err != nil {
		t.Fatalf("detect: %v", err)
	}
	spec := Spec{Action: action,
		Exempt: []Exemption{
			{Container: "a", Port: "veth3a9f01c", Addrs: []netip.Addr{netip.MustParseAddr("172.17.0.3"), netip.MustParseAddr("fd00:ec2:d0c::2")}},
			{Container: "b", Port: "vethb0", Addrs: []netip.Addr{netip.MustParseAddr("172.17.0.10"), netip.MustParseAddr("fd00:ec2:d0c:0:0:0:0:10")}},
		},
		Host: &HostSpec{Cgroups: []string{cg}},
	}
	m, err := NewManagerFor(b, spec, IPv4, IPv6)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i, what := range []string{"first", "steady"} {
		states, err := m.Ensure(ctx)
		if err != nil {
			t.Fatalf("%s ensure: %v", what, err)
		}
		for _, st := range states {
			if !st.Enforced || (i == 1 && len(st.Problems)+len(st.Updates) != 0) {
				t.Fatalf("%s %s: %+v", what, st.Family, st)
			}
		}
	}

	// Traffic: IMDS's address on lo, one connection from inside the
	// cgroup (dropped) and one from outside (answered).
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	if out, err := exec.Command("ip", "addr", "add", "169.254.169.254/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("address: %v %s", err, out)
	}
	l, err := net.Listen("tcp", "169.254.169.254:80")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dial := func(inCgroup bool) error {
		script := "exec busybox nc -w 1 169.254.169.254 80 </dev/null"
		if inCgroup {
			script = "echo $$ > " + filepath.Join(dir, "cgroup.procs") + " && " + script
		}
		out, err := exec.Command("sh", "-c", script).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	if err := dial(false); err != nil {
		t.Fatalf("outside the cgroup: %v", err)
	}
	if err := dial(true); err == nil {
		t.Fatal("inside the cgroup: IMDS answered")
	}
	if err := m.Remove(ctx); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if err := dial(true); err != nil {
		t.Fatalf("after remove, inside the cgroup: %v", err)
	}
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup
// on a unified host, /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Mount(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Skip(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	t.Skip("no cgroup v2 hierarchy mounted")
	return ""
}

// TestKernelConcurrentEnsure runs two managers (two `imdsguard apply` without
// the lock between them) against each drift, 50 rounds: deleting by spec in
// one transaction must leave exactly one of our jumps in each chain, never
// touch the operator's own DOCKER-USER rule, which rule-number deletion from
// a stale read did, and leave Docker's FORWARD jump as Docker put it.
func TestKernelConcurrentEnsure(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "legacy" {
				legacyPath(t)
			}
			inNewNetns(t, func() { kernelConcurrent(t) })
		})
	}
}

func kernelConcurrent(t *testing.T) {
	ns, err := netns.Get()
	if err != nil {
		t.Errorf("netns: %v", err)
		return
	}
	defer ns.Close()
	b, err := DetectBackend("auto")
	if err != nil {
		t.Errorf("detect: %v", err)
		return
	}
	ipt := func(f Family, args ...string) error {
		out, err := exec.Command(b.Binaries[f], args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %v: %v %s", b.Binaries[f], args, err, out)
		}
		return nil
	}
	operator := map[Family][]string{IPv4: {"-s", "10.9.9.9/32", "-j", "DROP"}, IPv6: {"-s", "fd00:9::9/128", "-j", "DROP"}}
	for _, f := range []Family{IPv4, IPv6} {
		for _, args := range [][]string{
			{"-N", DockerUser}, {"-A", DockerUser, "-j", "RETURN"},
			append([]string{"-I", DockerUser, "1"}, operator[f]...),
			{"-A", Forward, "-j", DockerUser},
		} {
			if err := ipt(f, args...); err != nil {
				t.Error(err)
				return
			}
		}
	}
	managers := make([]*Manager, 2)
	for i := range managers {
		if managers[i], err = NewManagerFor(b, Spec{Action: ActionDrop}, IPv4, IPv6); err != nil {
			t.Error(err)
			return
		}
	}
	for round := range 50 {
		if round > 0 {
			// Drift both ways: a duplicate jump behind the operator's rule,
			// a second FORWARD jump of ours, and Docker's jump put back on
			// top (its EnsureJumpRule).
			for _, f := range []Family{IPv4, IPv6} {
				for _, args := range [][]string{
					{"-I", DockerUser, "3", "-j", Chain}, {"-A", Forward, "-j", Chain},
					{"-D", Forward, "-j", DockerUser}, {"-I", Forward, "-j", DockerUser},
				} {
					if err := ipt(f, args...); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}
		errs := make(chan error, 2)
		for _, m := range managers {
			go func() {
				// Every iptables process must start in the test's namespace:
				// this thread is moved there and never returned to the pool.
				runtime.LockOSThread()
				if err := netns.Set(ns); err != nil {
					errs <- fmt.Errorf("setns: %w", err)
					return
				}
				_, err := m.Ensure(context.Background())
				errs <- err
			}()
		}
		var ensureErrs []error
		for range managers {
			if err := <-errs; err != nil {
				ensureErrs = append(ensureErrs, err)
			}
		}
		for _, f := range []Family{IPv4, IPv6} {
			out, err := exec.Command(saveName(b.Binaries[f]), "-t", Table).Output()
			if err != nil {
				t.Errorf("save: %v", err)
				return
			}
			o := parseSave(out)
			if n := len(indices(o.dockerUser, jumpRule(DockerUser, Chain))); n != 1 || o.dockerUser[0] != jumpRule(DockerUser, Chain) {
				t.Errorf("round %d %s: DOCKER-USER %q (errors %v)", round, f, o.dockerUser, ensureErrs)
			}
			if n := len(indices(o.forward, jumpRule(Forward, Chain))); n != 1 || o.forward[0] != jumpRule(Forward, Chain) ||
				len(indices(o.forward, jumpRule(Forward, DockerUser))) != 1 {
				t.Errorf("round %d %s: FORWARD %q (errors %v)", round, f, o.forward, ensureErrs)
			}
			if !slices.Contains(o.dockerUser, rule(DockerUser, operator[f])) {
				t.Errorf("round %d %s: the operator's rule is gone: %q", round, f, o.dockerUser)
			}
			if t.Failed() {
				return
			}
		}
		if len(ensureErrs) > 0 {
			t.Logf("round %d: %v", round, ensureErrs)
		}
	}
}

// TestKernelDetectAndCheckCreateNothing: detecting the backend and checking,
// on either flavour, in a namespace without tables, leaves it without legacy
// tables (iptables-legacy-save alone would create the filter table).
func TestKernelDetectAndCheckCreateNothing(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "legacy" {
				legacyPath(t)
			}
			inNewNetns(t, func() {
				b, err := DetectBackend("auto")
				if err != nil {
					t.Errorf("detect: %v", err)
					return
				}
				m, err := NewManagerFor(b, Spec{Action: ActionDrop}, IPv4, IPv6)
				if err != nil {
					t.Errorf("manager: %v", err)
					return
				}
				states, _ := m.Check(context.Background())
				for _, st := range states {
					if st.Enforced || st.Err != nil {
						t.Errorf("%s: %+v, want not enforced and no error", st.Family, st)
					}
				}
				for _, f := range []Family{IPv4, IPv6} {
					if ok, err := legacyTableExists(f, Table); err != nil || ok {
						t.Errorf("%s/%s: legacy filter table exists after detect and check (%v)", mode, f, err)
					}
				}
				if out, err := exec.Command("nft", "list", "ruleset").Output(); err == nil && len(strings.TrimSpace(string(out))) > 0 {
					t.Errorf("nftables ruleset after detect and check:\n%s", out)
				}
			})
		})
	}
}
