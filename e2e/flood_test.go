package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

// agentUsage is what the daemon holds: open descriptors and resident memory.
type agentUsage struct {
	fds   int
	rssKB int
}

func usageOf(pid int) (agentUsage, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return agentUsage{}, err
	}
	u := agentUsage{fds: len(ents)}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return agentUsage{}, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			u.rssKB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return u, nil
}

// sampler records the agent's peak usage until stopped.
type sampler struct {
	mu   sync.Mutex
	peak agentUsage
	stop chan struct{}
	done chan struct{}
}

func sample(pid int) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if u, err := usageOf(pid); err == nil {
				s.mu.Lock()
				s.peak.fds, s.peak.rssKB = max(s.peak.fds, u.fds), max(s.peak.rssKB, u.rssKB)
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) end() agentUsage {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// buildFloodClient builds the attacker where user nobody can run it.
func buildFloodClient(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "imdsguard-e2e-flood-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "floodclient")
	if out, err := exec.Command("go", "build", "-o", bin, "./floodclient").CombinedOutput(); err != nil {
		t.Fatalf("building the flood client: %v\n%s", err, out)
	}
	return bin
}

// flood runs one client as nobody in the host namespace and returns a
// function reporting its last line. The machine's hard RLIMIT_NOFILE
// (20,000 here, and the test cannot raise it) bounds one client, so big
// floods take several.
func flood(t *testing.T, s *sandbox.Sandbox, bin string, conns int) func() string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := s.HostCommand(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		bin, "-addr", "127.0.0.1:9721", "-conns", strconv.Itoa(conns))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	last := ""
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			last = sc.Text()
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("flood client stderr: %s", stderr.String())
		}
	})
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
}

// heldBy parses the client's "held N" figure.
func heldBy(line string) int {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "held" {
			n, _ := strconv.Atoi(f[i+1])
			return n
		}
	}
	return -1
}

// repairAll runs every drift kind reps times and returns the worst latency.
func (e *env) repairAll(t *testing.T, reps int, bound time.Duration) time.Duration {
	t.Helper()
	var worst time.Duration
	for _, d := range drifts {
		var lat []time.Duration
		for range reps {
			if _, err := e.s.HostRun("sh", "-c", d.script); err != nil {
				t.Fatalf("%s: %v", d.name, err)
			}
			start := time.Now()
			waitFor(t, "repair after "+d.name, bound, func() bool { return e.protectedOutside(d.family) })
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		worst = max(worst, lat[len(lat)-1])
		t.Logf("%s repaired in median %v, max %v (%d runs)", d.name, lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), reps)
	}
	return worst
}

// stopWithin sends SIGTERM and measures how long the daemon takes to exit.
func (e *env) stopWithin(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := e.agent.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.agent.Done():
	case <-time.After(limit):
		t.Fatalf("the daemon ignored SIGTERM for %v", limit)
	}
	took := time.Since(start)
	if !e.protectedOutside("ipv4") || !e.protectedOutside("ipv6") {
		t.Fatal("rules gone after SIGTERM")
	}
	return took
}

// protectedBridgeHost is a sandbox on iptables-nft with container
// "onbridge" and the daemon protecting it; it returns the daemon's idle
// usage.
func protectedBridgeHost(t *testing.T) (*env, agentUsage) {
	t.Helper()
	e := newEnv(t, sandbox.Options{Backend: sandbox.BackendNFT})
	if _, err := e.s.RunContainer("onbridge"); err != nil {
		t.Fatal(err)
	}
	e.startAgent(t)
	e.waitProtected(t)
	idle, err := usageOf(e.agent.Pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent idle: %d fds, %d KiB RSS", idle.fds, idle.rssKB)
	return e, idle
}

// Bounds the daemon must keep under a flood, over its idle figures: the
// metrics cap (64 connections) plus the descriptors of a sync in flight
// (iptables pipes, Docker connections), and the memory of 64 capped
// connections and their buffers with room for the Go heap's growth.
const (
	floodFDSlack = 64 + 48
	floodRSSKB   = 32 << 10
)

// TestFlood is issue 10's attack: user nobody holds idle connections to the
// metrics port. The repair, status and the block must not notice.
func TestFlood(t *testing.T) {
	const conns, floodClients = 30000, 2
	bin := buildFloodClient(t)
	e, idle := protectedBridgeHost(t)

	var clients []func() string
	for range floodClients {
		clients = append(clients, flood(t, e.s, bin, conns/floodClients))
	}
	last := func() string {
		var all []string
		for _, c := range clients {
			all = append(all, c())
		}
		return strings.Join(all, "; ")
	}
	held := func() int {
		n := 0
		for _, c := range clients {
			n += max(heldBy(c()), 0)
		}
		return n
	}
	peak := sample(e.agent.Pid())
	// The clients' connections fill the endpoint's cap and the kernel's
	// backlog; beyond those their SYNs are dropped and they keep retrying.
	waitFor(t, "the flood holding connections", 60*time.Second, func() bool { return held() > 64 })
	time.Sleep(3 * time.Second) // let the backlog fill: the attack at full strength
	t.Logf("flood clients: %s", last())
	for _, c := range clients {
		if !strings.HasPrefix(c(), "uid 65534 ") {
			t.Fatalf("a client does not run as nobody: %s", c())
		}
	}

	worst := e.repairAll(t, 5, 5*time.Second)
	start := time.Now()
	out, code := e.cli(t, "status")
	if code != 0 || !strings.Contains(out, "PROTECTED") {
		t.Fatalf("status under the flood: exit %d\n%s", code, out)
	}
	statusTook := time.Since(start)
	e.assertBlocked(t, "onbridge")
	if _, err := e.s.ReadIMDS("onbridge"); err == nil {
		t.Fatal("a bridge container reads IMDS under the flood")
	}
	p := peak.end()
	t.Logf("under the flood (%s): worst repair %v, status answered in %v; agent peak %d fds, %d KiB RSS (idle %d, %d)",
		last(), worst.Round(time.Millisecond), statusTook.Round(time.Millisecond), p.fds, p.rssKB, idle.fds, idle.rssKB)
	if p.fds > idle.fds+floodFDSlack {
		t.Errorf("descriptors grew from %d to %d under the flood (bound +%d)", idle.fds, p.fds, floodFDSlack)
	}
	if p.rssKB > idle.rssKB+floodRSSKB {
		t.Errorf("RSS grew from %d to %d KiB under the flood (bound +%d KiB)", idle.rssKB, p.rssKB, floodRSSKB)
	}
	took := e.stopWithin(t, 5*time.Second)
	t.Logf("SIGTERM under the flood: exited in %v", took.Round(time.Millisecond))
}

// TestBrokenECSConfig is issue 10's broken file: ecs.config as a FIFO (an
// open blocks until a writer comes) and as a link to /dev/zero (a read never
// ends). Repairs go on, the file is named once in the log and in status, and
// memory stays bounded.
func TestBrokenECSConfig(t *testing.T) {
	e, idle := protectedBridgeHost(t)
	cfg := filepath.Join(e.hostRoot, "etc/ecs/ecs.config")
	for _, tc := range []struct {
		name string
		make func() error
		want string
	}{
		{"FIFO", func() error { return syscall.Mkfifo(cfg, 0o644) }, "(a FIFO)"},
		// Links resolve inside --host-root, so its /dev/zero is the host's.
		{"link to /dev/zero", func() error {
			zero := filepath.Join(e.hostRoot, "dev/zero")
			if err := os.MkdirAll(filepath.Dir(zero), 0o755); err != nil {
				return err
			}
			if err := syscall.Mknod(zero, syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
				return err
			}
			return os.Symlink("/dev/zero", cfg)
		}, "(a character device)"},
		// Sparse: the cap is checked on the file's size before any read.
		{"200 MB file", func() error {
			return writeSized(cfg, nil, 200<<20)
		}, fmt.Sprintf("%d bytes, the limit is", 200<<20)},
		// The 2.5 MB, 200,000-key document that once cost seconds a sync.
		{"2.5 MB ecs.config.json with 200,000 keys", func() error {
			return writeSized(cfg+".json", bigJSON(200000), 0)
		}, fmt.Sprintf("%d bytes, the limit is", len(bigJSON(200000)))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.Remove(cfg); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			if err := tc.make(); err != nil {
				t.Fatal(err)
			}
			peak := sample(e.agent.Pid())
			waitFor(t, "status naming the file", 10*time.Second, func() bool {
				st := e.status(t)
				return strings.Contains(st.ECSConfig.Error, tc.want) && !st.ECSConfig.AWSVPCBlockIMDS
			})
			out, code := e.cli(t, "status")
			if code != 1 || !strings.Contains(out, "UNREADABLE") || !strings.Contains(out, tc.want) {
				t.Fatalf("status: exit %d\n%s", code, out)
			}
			worst := e.repairAll(t, 3, 5*time.Second)
			e.assertBlocked(t, "onbridge")
			metrics, err := e.s.HostRun("sh", "-c", `printf 'GET /metrics HTTP/1.0\r\n\r\n' | busybox nc 127.0.0.1 9721`)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(metrics, "imdsguard_ecs_awsvpc_block_imds 0") || !strings.Contains(metrics, `imdsguard_rule_present{family="ipv4"} 1`) {
				t.Errorf("metrics claim what the read did not see:\n%s", metrics)
			}
			// The check as a one-shot command: bounded, one line, exit 2.
			start := time.Now()
			out, code = e.cli(t, "check")
			if code != 2 || !strings.Contains(out, tc.want) {
				t.Errorf("check: exit %d\n%s", code, out)
			}
			checkTook := time.Since(start)
			p := peak.end()
			// The reader's own line; a verdict change quotes the reasons too,
			// once per change, which is another event.
			lines := 0
			for _, l := range strings.Split(e.agent.Log(), "\n") {
				if strings.Contains(l, tc.want) && !strings.Contains(l, `"msg":"verdict changed"`) {
					lines++
				}
			}
			t.Logf("%s: worst repair %v; check answered in %v; agent peak %d fds, %d KiB RSS (idle %d, %d); %d log lines name it",
				tc.name, worst.Round(time.Millisecond), checkTook.Round(time.Millisecond), p.fds, p.rssKB, idle.fds, idle.rssKB, lines)
			if lines != 1 {
				t.Errorf("%d log lines name the file, want 1", lines)
			}
			if p.rssKB > idle.rssKB+floodRSSKB {
				t.Errorf("RSS grew from %d to %d KiB (bound +%d KiB)", idle.rssKB, p.rssKB, floodRSSKB)
			}
		})
	}
	took := e.stopWithin(t, 5*time.Second)
	t.Logf("SIGTERM with the last broken file in place: exited in %v", took.Round(time.Millisecond))
}

// TestOneShotStopsOnSIGTERM: a one-shot command stuck on a dockerd that
// accepts and never answers ends within moments of SIGTERM, leaving the
// rules it had verified.
func TestOneShotStopsOnSIGTERM(t *testing.T) {
	e := newEnv(t, sandbox.Options{Backend: sandbox.BackendNFT, NoDockerd: true})
	if out, code := e.cli(t, "apply"); code != 0 {
		t.Fatalf("apply: exit %d\n%s", code, out)
	}
	hung := filepath.Join(e.s.Dir, "hung.sock")
	l, err := net.Listen("unix", hung)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	for _, cmd := range []string{"apply", "check"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		args := append([]string{cmd}, e.flags()...)
		args = append(args, "--docker-host", "unix://"+hung)
		c := e.s.HostCommand(ctx, agentBin, args...)
		var out strings.Builder
		c.Stdout, c.Stderr = &out, &out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case err := <-done:
			t.Fatalf("%s did not wait for the hung dockerd: %v\n%s", cmd, err, out.String())
		case <-time.After(time.Second): // in the Docker call
		}
		start := time.Now()
		// nsenter execs the command, so the pid is imdsguard's.
		if err := c.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s ignored SIGTERM for 5s\n%s", cmd, out.String())
		}
		cancel()
		t.Logf("%s: exited %v after SIGTERM", cmd, time.Since(start).Round(time.Millisecond))
	}
	if !e.protectedOutside("ipv4") || !e.protectedOutside("ipv6") {
		t.Fatal("rules gone after a stopped one-shot command")
	}
}

// writeSized writes data to path, then extends it to size bytes (a hole)
// when size is larger.
func writeSized(path string, data []byte, size int64) error {
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	if size > int64(len(data)) {
		return os.Truncate(path, size)
	}
	return nil
}

// bigJSON is an ecs.config.json object of n distinct keys.
func bigJSON(n int) []byte {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\"k%07d\":0", i)
	}
	b.WriteString("}")
	return []byte(b.String())
}
