// Command demo shows imdsguard at work in a simulated ECS container
// instance (see e2e/sandbox): a container reads the instance metadata
// service, the agent starts, the container no longer can, its neighbours
// still answer, drift is repaired, and `imdsguard status` sums it up.
// It needs root and tears everything down before it exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

func main() {
	bin := flag.String("imdsguard", "bin/imdsguard", "the imdsguard binary to run")
	backend := flag.String("backend", "nft", "iptables flavour: nft or legacy")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (it builds network namespaces and runs dockerd); try: sudo make demo")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, sandbox.Backend(*backend)); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(ctx context.Context, bin string, backend sandbox.Backend) (err error) {
	bin, err = filepath.Abs(bin)
	if err != nil {
		return err
	}
	step("bringing up a simulated ECS container instance (iptables-%s, dockerd, metadata mock)", backend)
	s, err := sandbox.New(ctx, sandbox.Options{Backend: backend})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing down")
		err = errors.Join(err, s.Close())
	}()

	if _, err := s.RunContainer("task"); err != nil {
		return err
	}
	step("a bridge-mode task container asks IMDS who it runs on")
	body, err := s.ReadIMDS("task")
	if err != nil {
		return fmt.Errorf("the container should read IMDS before the agent runs: %w", err)
	}
	fmt.Printf("    instance-id: %s   <- and the instance role's credentials are one path away\n", body)

	hostRoot := filepath.Join(s.Dir, "hostroot")
	if err := os.MkdirAll(filepath.Join(hostRoot, "etc/ecs"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(hostRoot, "etc/ecs/ecs.config"), []byte("ECS_CLUSTER=demo\n"), 0o644); err != nil {
		return err
	}
	socket := filepath.Join(s.Dir, "imdsguard.sock")
	flags := []string{"--docker-host", s.DockerHost, "--status-socket", socket, "--host-root", hostRoot, "--ecs-config-mode", "enforce"}
	step("starting: imdsguard run --ecs-config-mode enforce")
	p, err := s.StartProcess("imdsguard", bin, append([]string{"run", "--metrics-addr", "", "--log-format", "text"}, flags...)...)
	if err != nil {
		return err
	}
	var st *status.Status
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err = status.QueryStatus(ctx, socket)
		if err == nil && st.Firewall.IPv4.Enforced && st.Firewall.IPv6.Enforced {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent did not enforce within 30s:\n%s", p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}

	step("the same container tries again")
	for _, addr := range []string{sandbox.IMDSv4, sandbox.IMDSv6} {
		err := s.Probe("task", addr, 80, 2*time.Second)
		fmt.Printf("    IMDS %-16s %s\n", addr, verdict(err, false))
	}
	for _, n := range sandbox.Neighbours {
		err := s.Probe("task", n.Addr, n.Port, 2*time.Second)
		fmt.Printf("    %-20s %-16s %s\n", n.Name, n.Addr, verdict(err, true))
	}

	step("drift: someone runs 'iptables -F DOCKER-USER'")
	if _, err := s.HostRun("iptables", "-F", "DOCKER-USER"); err != nil {
		return err
	}
	start := time.Now()
	for {
		out, _ := s.HostRun("iptables", "-S", "DOCKER-USER")
		if strings.Contains(out, "-A DOCKER-USER -j IMDS-GUARD") {
			break
		}
		if time.Since(start) > 30*time.Second {
			return errors.New("the block did not come back")
		}
	}
	fmt.Printf("    the block was back %v later (seen from outside the agent)\n", time.Since(start).Round(time.Millisecond))
	fmt.Printf("    IMDS %-16s %s\n", sandbox.IMDSv4, verdict(s.Probe("task", sandbox.IMDSv4, 80, 2*time.Second), false))

	step("imdsguard status")
	cmd := s.HostCommand(ctx, bin, append([]string{"status"}, flags...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return err
		}
	}
	cfg, _ := os.ReadFile(filepath.Join(hostRoot, "etc/ecs/ecs.config"))
	step("/etc/ecs/ecs.config after --ecs-config-mode enforce")
	fmt.Print(indent(string(cfg)))
	return p.Stop(10 * time.Second)
}

func verdict(err error, wantReachable bool) string {
	switch {
	case err == nil && wantReachable:
		return "answers (as it must)"
	case err == nil:
		return "ANSWERS"
	case wantReachable:
		return "NO ANSWER: " + err.Error()
	case errors.Is(err, sandbox.ErrTimeout):
		return "blocked (no answer)"
	case errors.Is(err, sandbox.ErrRefused):
		return "blocked (rejected)"
	}
	return "blocked: " + err.Error()
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}
