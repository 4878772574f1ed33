package sandbox_test

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

// TestLifecycle exercises the knobs agent tests rely on: a chain created
// before dockerd starts, dockerd restarts, host processes, and telling a
// dropped connection (timeout) from a rejected one (refused).
func TestLifecycle(t *testing.T) {
	s := sandbox.NewT(t, sandbox.Options{Backend: sandbox.BackendLegacy, NoDockerd: true})
	if pid := s.DockerdPid(); pid != 0 {
		t.Fatalf("NoDockerd: dockerd running as %d", pid)
	}
	if _, err := s.HostRun("iptables", "-N", "DOCKER-USER"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HostRun("iptables", "-A", "DOCKER-USER", "-d", sandbox.IMDSv4, "-p", "tcp", "--dport", "80", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HostRun("iptables", "-A", "DOCKER-USER", "-d", sandbox.IMDSv4, "-p", "tcp", "--dport", "8080", "-j", "REJECT", "--reject-with", "tcp-reset"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.StartDockerd(ctx); err != nil {
		t.Fatal(err)
	}
	if out, _ := s.HostRun("iptables-legacy-save"); !strings.Contains(out, "-A DOCKER-USER -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DROP") {
		t.Errorf("dockerd dropped the pre-existing DOCKER-USER rule:\n%s", out)
	}
	if _, err := s.RunContainer("c1"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Probe("c1", sandbox.IMDSv4, 80, time.Second); !errors.Is(err, sandbox.ErrTimeout) {
		t.Errorf("dropped: want timeout, got %v", err)
	}
	t.Logf("timeout probe took %v", time.Since(start).Round(time.Millisecond))
	if err := s.Probe("c1", sandbox.IMDSv4, 8080, time.Second); !errors.Is(err, sandbox.ErrRefused) {
		t.Errorf("rejected: want refused, got %v", err)
	}
	if err := s.Probe("c1", "169.254.170.2", 80, time.Second); err != nil {
		t.Errorf("ECS credentials: %v", err)
	}

	old := s.DockerdPid()
	start = time.Now()
	if err := s.RestartDockerd(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("dockerd restart took %v", time.Since(start).Round(time.Millisecond))
	if s.DockerdPid() == old || syscall.Kill(old, 0) == nil {
		t.Errorf("restart: old pid %d, new pid %d", old, s.DockerdPid())
	}
	if _, err := s.Docker("start", "c1"); err != nil {
		t.Fatal(err)
	}
	if body, err := s.ReadIMDSv6("c1"); err != nil || body != sandbox.InstanceID {
		t.Errorf("IMDS v6 after restart: %q, %v", body, err)
	}

	p, err := s.StartProcess("lister", "sh", "-c", "iptables -V; ip -o link show hv0; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.Log(), "hv0") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if log := p.Log(); !strings.Contains(log, "legacy") || !strings.Contains(log, "hv0") {
		t.Errorf("process not in host ns with legacy PATH:\n%s", log)
	}
	if err := p.Stop(time.Second); err != nil {
		t.Error(err)
	}
	if done, _ := p.Exited(); !done {
		t.Error("process still running after Stop")
	}
}
