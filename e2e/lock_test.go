package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/agent/hostlock"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// removeLockFile deletes, at cleanup, the lock file the binary creates for the sandbox's
// namespace (named after its inode, so no other run shares it).
func removeLockFile(t *testing.T, s *sandbox.Sandbox) {
	var st syscall.Stat_t
	if err := syscall.Stat(s.HostNetNSPath, &st); err != nil {
		t.Errorf("stat %s: %v", s.HostNetNSPath, err)
		return
	}
	t.Cleanup(func() {
		os.Remove(filepath.Join(hostlock.DefaultDir, fmt.Sprintf("netns-%d-%d.lock", st.Dev, st.Ino)))
	})
}

// legacyTables lists the iptables-legacy tables of the sandbox's host
// namespace, IPv4 and IPv6.
func legacyTables(t *testing.T, s *sandbox.Sandbox) string {
	t.Helper()
	out, err := s.HostRun("sh", "-c", "cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null; true")
	if err != nil {
		t.Fatalf("reading the legacy table names: %v %s", err, out)
	}
	return strings.TrimSpace(out)
}

// countJumps counts the FORWARD and DOCKER-USER jumps to IMDS-GUARD and the
// jumps to DOCKER-USER (Docker's rule; no dockerd runs here) in one family.
func countJumps(t *testing.T, s *sandbox.Sandbox, save string) (forward, user, docker int) {
	t.Helper()
	out, err := s.HostRun(save, "-t", "filter")
	if err != nil {
		t.Fatalf("%s: %v %s", save, err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		switch l = strings.TrimSpace(l); {
		case l == "-A FORWARD -j IMDS-GUARD":
			forward++
		case l == "-A DOCKER-USER -j IMDS-GUARD":
			user++
		case strings.HasSuffix(l, " -j DOCKER-USER"):
			docker++
		}
	}
	return forward, user, docker
}

// TestOneWriter: check creates nothing; a second daemon exits non-zero
// within a second naming the first; apply and remove refuse while it runs;
// then 50 rounds of two concurrent applies leave one jump per family.
func TestOneWriter(t *testing.T) {
	e := newEnv(t, sandbox.Options{NoDockerd: true})

	// Read-only means read-only: no legacy tables after a check (the
	// sandbox is nft; iptables-legacy-save alone would create them).
	if before := legacyTables(t, e.s); before != "" {
		t.Fatalf("legacy tables before check: %q", before)
	}
	if out, code := e.cli(t, "check"); code != 1 {
		t.Fatalf("check on a bare host: exit %d\n%s", code, out)
	}
	if after := legacyTables(t, e.s); after != "" {
		t.Fatalf("check created legacy tables: %q", after)
	}

	e.startAgent(t)
	waitFor(t, "the daemon's first verified sync", 30*time.Second, func() bool {
		st, err := status.QueryStatus(context.Background(), e.socket)
		return err == nil && st.Firewall.IPv4.Enforced
	})
	pid := fmt.Sprintf("pid %d", e.agent.Pid())

	// A second daemon, with its own socket and metrics port.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second := e.s.HostCommand(ctx, agentBin, append([]string{"run"}, append(e.flags(),
		"--status-socket", filepath.Join(e.s.Dir, "second.sock"), "--metrics-addr", "")...)...)
	var stderr strings.Builder
	second.Stderr = &stderr
	start := time.Now()
	err := second.Run()
	took := time.Since(start)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("second run: %v, want a non-zero exit\n%s", err, stderr.String())
	}
	t.Logf("second run exited %d after %v: %s", ee.ExitCode(), took, strings.TrimSpace(stderr.String()))
	if took > time.Second {
		t.Errorf("second run took %v to exit", took)
	}
	if lines := strings.Split(strings.TrimSpace(stderr.String()), "\n"); len(lines) != 1 || !strings.Contains(lines[0], pid) {
		t.Errorf("second run said %q, want one line naming %s", stderr.String(), pid)
	}

	for _, cmd := range []string{"apply", "remove"} {
		out, code := e.cli(t, cmd)
		if code != 2 || !strings.Contains(out, pid) {
			t.Errorf("%s while the daemon runs: exit %d\n%s", cmd, code, out)
		}
	}

	if err := e.agent.Stop(10 * time.Second); err != nil {
		t.Logf("stopping the daemon: %v", err)
	}
	// A DOCKER-USER as an operator's boothook leaves it (dockerd is not
	// running): both of our jumps go in, and never Docker's.
	for _, ipt := range []string{"iptables", "ip6tables"} {
		if out, err := e.s.HostRun(ipt, "-N", "DOCKER-USER"); err != nil {
			t.Fatalf("%s -N DOCKER-USER: %v %s", ipt, err, out)
		}
	}
	for round := range 50 {
		// Drift each round: an extra jump behind the first in each chain.
		if round > 0 {
			for _, ipt := range []string{"iptables", "ip6tables"} {
				for _, args := range [][]string{{"-A", "DOCKER-USER", "-j", "IMDS-GUARD"}, {"-A", "FORWARD", "-j", "IMDS-GUARD"}} {
					if out, err := e.s.HostRun(ipt, args...); err != nil {
						t.Fatalf("%s %v: %v %s", ipt, args, err, out)
					}
				}
			}
		}
		codes := make(chan string, 2)
		for range 2 {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				out, err := e.s.HostCommand(ctx, agentBin, append([]string{"apply"}, e.flags()...)...).CombinedOutput()
				if err != nil {
					codes <- fmt.Sprintf("%v: %s", err, out)
					return
				}
				codes <- ""
			}()
		}
		for range 2 {
			if msg := <-codes; msg != "" {
				t.Errorf("round %d: apply failed: %s", round, msg)
			}
		}
		for _, save := range []string{"iptables-save", "ip6tables-save"} {
			if f, u, d := countJumps(t, e.s, save); f != 1 || u != 1 || d != 0 {
				t.Fatalf("round %d %s: %d FORWARD and %d DOCKER-USER jumps to IMDS-GUARD, %d jumps to DOCKER-USER; want 1, 1 and 0", round, save, f, u, d)
			}
		}
	}
}
