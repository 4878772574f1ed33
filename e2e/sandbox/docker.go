package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// StartDockerd starts dockerd in the host namespace and waits until its
// API answers (and the busybox image is imported).
func (s *Sandbox) StartDockerd(ctx context.Context) error {
	if s.dockerd != nil {
		if done, _ := s.dockerd.Exited(); !done {
			return errors.New("sandbox: dockerd already running")
		}
	}
	start := time.Now()
	cfg := filepath.Join(s.Dir, "daemon.json")
	if err := os.WriteFile(cfg, []byte("{}\n"), 0o644); err != nil {
		return err
	}
	args := []string{
		"-H", s.DockerHost,
		"--data-root", filepath.Join(s.Dir, "data"),
		"--exec-root", filepath.Join(s.Dir, "exec"),
		"--pidfile", filepath.Join(s.Dir, "docker.pid"),
		"--config-file", cfg, // ignore the machine's /etc/docker/daemon.json
		"--cgroup-parent", s.CgroupParent, // per-sandbox, so Close can find and remove it
		"--ipv6", "--fixed-cidr-v6", DockerV6CIDR,
		"--iptables=true",
		"--shutdown-timeout", "3",
	}
	if s.opts.CgroupV2 {
		// systemd is not the cgroup manager in the sandbox's namespace.
		args = append(args, "--exec-opt", "native.cgroupdriver=cgroupfs")
	}
	args = append(args, s.opts.DockerdArgs...)
	p, err := startArgv(s.Dir, "dockerd", s.hostArgv("dockerd", args...), s.Env())
	if err != nil {
		return err
	}
	s.dockerd = p
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var version string
	for {
		if version, err = s.dockerCtx(ctx, 5*time.Second, "version", "--format", "{{.Server.Version}}"); err == nil {
			break
		}
		if done, werr := p.Exited(); done {
			return fmt.Errorf("sandbox: dockerd exited: %v\n%s", werr, tail(p.Log(), 40))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sandbox: dockerd API not up: %w\n%s", ctx.Err(), tail(p.Log(), 40))
		case <-time.After(100 * time.Millisecond):
		}
	}
	s.logf("sandbox %s: dockerd %s (pid %d) up in %v", s.ID, version, p.Pid(), time.Since(start).Round(time.Millisecond))
	if !s.imageReady {
		t := time.Now()
		if err := s.importImage(ctx); err != nil {
			return err
		}
		s.imageReady = true
		s.logf("sandbox %s: image imported in %v", s.ID, time.Since(t).Round(time.Millisecond))
	}
	return nil
}

// StopDockerd stops dockerd by pid (SIGTERM; SIGKILL after 20s) and waits
// for it, its containerd and the shims to be gone.
func (s *Sandbox) StopDockerd() error {
	p := s.dockerd
	if p == nil {
		return nil
	}
	start := time.Now()
	err := p.Stop(20 * time.Second)
	s.dockerd = nil
	// containerd exits with dockerd; shims may lag or be orphaned. Processes
	// the test started itself (the agent) mention the directory too, and
	// must survive a dockerd restart.
	s.mu.Lock()
	keep := map[int]bool{}
	for _, p := range s.procs {
		keep[p.Pid()] = true
	}
	// The private bus and firewalld name the directory too (their config).
	for _, p := range []*Process{s.dbus, s.firewalld} {
		if p != nil {
			keep[p.Pid()] = true
		}
	}
	s.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := slices.DeleteFunc(pidsMentioning(s.Dir), func(pid int) bool { return keep[pid] })
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			err = errors.Join(err, killPids(left))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.logf("sandbox %s: dockerd stopped in %v", s.ID, time.Since(start).Round(time.Millisecond))
	return err
}

// RestartDockerd stops and starts dockerd; the data root (images,
// networks, stopped containers) persists.
func (s *Sandbox) RestartDockerd(ctx context.Context) error {
	if err := s.StopDockerd(); err != nil {
		return err
	}
	return s.StartDockerd(ctx)
}

// DockerdPid is the running dockerd's pid, or 0.
func (s *Sandbox) DockerdPid() int {
	if s.dockerd == nil {
		return 0
	}
	if done, _ := s.dockerd.Exited(); done {
		return 0
	}
	return s.dockerd.Pid()
}

// DockerdLog returns dockerd's output so far.
func (s *Sandbox) DockerdLog() string {
	return readFileString(filepath.Join(s.Dir, "dockerd.log"))
}

// Docker runs the docker CLI against the sandbox daemon (60s limit) and
// returns trimmed stdout.
func (s *Sandbox) Docker(args ...string) (string, error) {
	return s.dockerCtx(context.Background(), 60*time.Second, args...)
}

func (s *Sandbox) dockerCtx(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.dockerCLI, args...)
	cmd.Env = s.Env()
	cmd.WaitDelay = 2 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return strings.TrimSpace(string(out)), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// RunContainer starts a detached busybox container running sleep, named
// name, with extra `docker run` flags (e.g. "--network", "v6net"). It
// returns once the container's IPv6 addresses (if any) can reach their
// gateway, so a first IPv6 probe does not race DAD or neighbour discovery.
func (s *Sandbox) RunContainer(name string, dockerArgs ...string) (string, error) {
	// --init: sleep as pid 1 would ignore SIGTERM and stall every stop.
	args := append([]string{"run", "-d", "--init", "--name", name}, dockerArgs...)
	args = append(args, Image, "sleep", "86400")
	id, err := s.Docker(args...)
	if err != nil {
		return "", err
	}
	gws, err := s.v6Gateways(name)
	if err != nil {
		return id, err
	}
	for _, gw := range gws {
		if err := s.waitPing(name, gw, 10*time.Second); err != nil {
			return id, err
		}
	}
	return id, nil
}

func (s *Sandbox) v6Gateways(container string) ([]string, error) {
	out, err := s.Docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", container)
	if err != nil {
		return nil, err
	}
	var nets map[string]struct {
		IPv6Gateway       string
		GlobalIPv6Address string
	}
	if err := json.Unmarshal([]byte(out), &nets); err != nil {
		return nil, fmt.Errorf("inspect %s: %w", container, err)
	}
	var gws []string
	for _, n := range nets {
		if n.IPv6Gateway != "" && n.GlobalIPv6Address != "" {
			gws = append(gws, n.IPv6Gateway)
		}
	}
	return gws, nil
}

func (s *Sandbox) waitPing(container, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := s.dockerCtx(context.Background(), 5*time.Second, "exec", container, "ping", "-c", "1", "-W", "1", addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("container %s cannot ping %s: %w", container, addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CreateNetwork creates a user-defined bridge network with IPv6. Subnets
// may be empty for the daemon's choice (v4) but IPv6 needs v6subnet.
func (s *Sandbox) CreateNetwork(name, v4subnet, v6subnet string) error {
	args := []string{"network", "create", "--driver", "bridge", "--ipv6"}
	if v4subnet != "" {
		args = append(args, "--subnet", v4subnet)
	}
	if v6subnet != "" {
		args = append(args, "--subnet", v6subnet)
	}
	_, err := s.Docker(append(args, name)...)
	return err
}

func readFileString(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", p, err)
	}
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
