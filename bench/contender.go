package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/firewall"
)

// Contender kinds.
const (
	kindStatic    = "static"
	kindPoll      = "poll"
	kindImdsguard = "imdsguard"
)

// The seed recipe's rule, in DOCKER-USER.
var seedRule = []string{"-d", firewall.IMDSv4, "-j", "DROP"}

// pollInterval is the hand-written loop's period.
const pollInterval = 60 * time.Second

// Drift kinds.
var driftKinds = []string{"rule-deleted", "docker-user-flushed", "forward-jump-removed", "restore-without-rule"}

type contender struct {
	kind    string
	backend sandbox.Backend
	sb      *sandbox.Sandbox
	agent   *sandbox.Process
	poller  *sandbox.Process
	status  *statusClient
	mon     *nftMonitor // nil on legacy
	docker  *dockerAPI
	resync  time.Duration
	logf    func(string, ...any)
	logDir  string      // where the agent's log is kept after Close
	warned  atomic.Bool // iptables-save's stderr was logged once
}

func (c *contender) label() string { return fmt.Sprintf("%s (%s)", c.kind, c.backend) }

// rule is the contender's own rule in DOCKER-USER.
func (c *contender) rule() []string {
	if c.kind == kindImdsguard {
		return []string{"-j", "IMDS-GUARD"}
	}
	return seedRule
}

func newContender(ctx context.Context, kind string, backend sandbox.Backend, bin string, resync time.Duration, logf func(string, ...any)) (_ *contender, err error) {
	c := &contender{kind: kind, backend: backend, resync: resync, logf: logf}
	sb, err := sandbox.New(ctx, sandbox.Options{Backend: backend, Logf: logf, NoDockerd: kind != kindImdsguard})
	if err != nil {
		return nil, err
	}
	c.sb = sb
	c.docker = newDockerAPI(sb.DockerHost)
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	switch kind {
	case kindStatic, kindPoll:
		// "Restored at boot": the saved rule is in place before dockerd
		// starts, so it sits above the RETURN dockerd appends.
		if _, err := sb.HostRun("iptables", "-w", "-N", "DOCKER-USER"); err != nil {
			return nil, err
		}
		if _, err := sb.HostRun("iptables", append([]string{"-w", "-A", "DOCKER-USER"}, seedRule...)...); err != nil {
			return nil, err
		}
		if err := sb.StartDockerd(ctx); err != nil {
			return nil, err
		}
		if kind == kindPoll {
			// What people write by hand; bounded so it cannot outlive a run.
			r := strings.Join(seedRule, " ")
			script := fmt.Sprintf(`i=0; while [ $i -lt 200 ]; do sleep %d; iptables -w -C DOCKER-USER %s 2>/dev/null || iptables -w -I DOCKER-USER 1 %s; i=$((i+1)); done`,
				int(pollInterval/time.Second), r, r)
			if c.poller, err = sb.StartProcess("poll", "sh", "-c", script); err != nil {
				return nil, err
			}
		}
	case kindImdsguard:
		hostRoot := filepath.Join(sb.Dir, "hostroot")
		if err := os.Mkdir(hostRoot, 0o755); err != nil {
			return nil, err
		}
		sock := filepath.Join(sb.Dir, "s.sock")
		c.agent, err = sb.StartProcess("imdsguard", bin, "run",
			"--docker-host", sb.DockerHost, "--status-socket", sock, "--metrics-addr", "",
			"--host-root", hostRoot, "--resync-interval", resync.String(), "--log-format", "json",
			"--exempt-label", agent.ExampleExemptLabel)
		if err != nil {
			return nil, err
		}
		c.status = newStatusClient(sock)
		if err := c.waitProtected(ctx, 30*time.Second); err != nil {
			return nil, err
		}
	}
	if backend == sandbox.BackendNFT {
		if c.mon, err = newNFTMonitor(sb.HostNetNSPath); err != nil {
			return nil, err
		}
	}
	ok, err := c.isBlocked()
	if err != nil {
		return nil, err
	}
	if !ok {
		save, _ := c.save()
		return nil, fmt.Errorf("%s: block not in place after setup:\n%s", c.label(), save)
	}
	return c, nil
}

func (c *contender) waitProtected(ctx context.Context, limit time.Duration) error {
	end := time.Now().Add(limit)
	var last string
	for time.Now().Before(end) {
		st, err := c.status.get()
		if err == nil && st.Firewall.IPv4.Enforced && st.Docker.Reachable && st.LastSync != nil {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = st.Verdict + ": " + strings.Join(st.Reasons, "; ")
		}
		if done, _ := c.agent.Exited(); done {
			return fmt.Errorf("imdsguard exited:\n%s", tailLines(c.agent.Log(), 30))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: agent not enforcing after %v (%s)\n%s", c.label(), limit, last, tailLines(c.agent.Log(), 30))
}

// save reads every table (raw and mangle see the packet first) from stdout alone: a warning iptables-save
// writes to stderr would otherwise land in the middle of a rule line.
func (c *contender) save() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr strings.Builder
	cmd := c.sb.HostCommand(ctx, "iptables-save")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("iptables-save: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if w := strings.TrimSpace(stderr.String()); w != "" && c.warned.CompareAndSwap(false, true) {
		c.logf("%s: iptables-save says (on stderr, first time only): %s", c.label(), w)
	}
	return string(out), nil
}

func (c *contender) isBlocked() (bool, error) {
	s, err := c.save()
	if err != nil {
		return false, err
	}
	return blocked(s), nil
}

// drift breaks the block one way. Every command runs in the sandbox's host
// namespace with the backend's binaries.
func (c *contender) drift(kind string) error {
	var err error
	switch kind {
	case "rule-deleted":
		_, err = c.sb.HostRun("iptables", append([]string{"-w", "-D", "DOCKER-USER"}, c.rule()...)...)
	case "docker-user-flushed":
		_, err = c.sb.HostRun("iptables", "-w", "-F", "DOCKER-USER")
	case "forward-jump-removed":
		// Every unconditional jump, in one transaction: Docker and the agent
		// can each have inserted one, and deleting only the first of two
		// leaves the block whole, which is no drift at all.
		_, err = c.sb.HostRun("sh", "-c", `n=$(iptables-save -t filter | grep -c -x -- '-A FORWARD -j DOCKER-USER'); `+
			`{ echo '*filter'; i=0; while [ "$i" -lt "$n" ]; do echo '-D FORWARD -j DOCKER-USER'; i=$((i+1)); done; echo COMMIT; } | iptables-restore -w --noflush`)
	case "restore-without-rule":
		// An old saved ruleset restored over the live one (full table, no
		// --noflush), as a config-management run or a boot script would.
		line := "-A DOCKER-USER " + strings.Join(c.rule(), " ")
		_, err = c.sb.HostRun("sh", "-c", fmt.Sprintf(`iptables-save -t filter | grep -v -x -- '%s' | iptables-restore -w`, line))
	default:
		err = fmt.Errorf("unknown drift %q", kind)
	}
	return err
}

// restore puts a saved filter table back (the "reboot" for contenders that
// never repair).
func (c *contender) restore(save string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := c.sb.HostCommand(ctx, "iptables-restore", "-w")
	cmd.Stdin = strings.NewReader(save)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, out)
	}
	return nil
}

// sample is one drift.
type sample struct {
	Contender string
	Backend   string
	Kind      string
	Scenario  string
	Repaired  bool
	Latency   time.Duration // drift to verified block; window when not repaired
	Window    time.Duration
	Start     time.Time
}

// measure drifts once and times the repair from outside, giving up after
// window. On nft the start and end are the kernel's commit notifications;
// on legacy the drift command's start and the first iptables-save showing
// the block again (polled every 10 ms).
func (c *contender) measure(ctx context.Context, kind string, window time.Duration) (sample, error) {
	s := sample{Contender: c.kind, Backend: string(c.backend), Kind: kind, Window: window}
	if c.mon != nil {
		return c.measureNFT(ctx, s, window)
	}
	start := time.Now()
	s.Start = start
	if err := c.drift(kind); err != nil {
		return s, err
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Since(start) < window {
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-tick.C:
		}
		ok, err := c.isBlocked()
		if err != nil {
			return s, err
		}
		if ok {
			s.Repaired, s.Latency = true, time.Since(start)
			return s, nil
		}
	}
	s.Latency = window
	return s, nil
}

func (c *contender) measureNFT(ctx context.Context, s sample, window time.Duration) (sample, error) {
	m := c.mon
	m.drain()
	if err := c.drift(s.Kind); err != nil {
		return s, err
	}
	var tDrift time.Time
	select {
	case tDrift = <-m.ch:
	case <-time.After(5 * time.Second):
		return s, errors.New("no nf_tables notification for the drift")
	case <-ctx.Done():
		return s, ctx.Err()
	}
	s.Start = tDrift
	last := tDrift
	deadline := time.NewTimer(time.Until(tDrift.Add(window)))
	defer deadline.Stop()
	pending := false // a commit arrived during the last check
	for {
		if !pending {
			select {
			case t := <-m.ch:
				last = t
			case <-deadline.C:
				s.Latency = window
				return s, nil
			case <-ctx.Done():
				return s, ctx.Err()
			}
		}
		pending = false
		// The kernel state is checked after the latest commit we know of.
		for drained := false; !drained; {
			select {
			case t := <-m.ch:
				last = t
			default:
				drained = true
			}
		}
		ok, err := c.isBlocked()
		if err != nil {
			return s, err
		}
		// Commits that landed while iptables-save ran.
		for drained := false; !drained; {
			select {
			case t := <-m.ch:
				last = t
				pending = true
			default:
				drained = true
			}
		}
		if ok {
			// The block is back as of the last commit seen before the check
			// ended; nothing else commits here but the repairer.
			s.Repaired, s.Latency = true, last.Sub(tDrift)
			return s, nil
		}
	}
}

// settle waits between drifts: jittered so drifts do not lock to any
// period of the contender (the resync timer, the poll loop).
func (c *contender) settle(ctx context.Context, min, jitter time.Duration) {
	d := min
	if jitter > 0 {
		d += rand.N(jitter)
	}
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	if c.mon != nil {
		c.mon.quiet(ctx, 50*time.Millisecond, 2*time.Second)
	}
}

// ensureBlocked waits for the block (and puts it back from snapshot if it
// is not there within limit), so every drift starts from a protected host.
func (c *contender) ensureBlocked(ctx context.Context, snapshot string, limit time.Duration) error {
	end := time.Now().Add(limit)
	for {
		ok, err := c.isBlocked()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(end) {
			if err := c.restore(snapshot); err != nil {
				return err
			}
			if ok, err := c.isBlocked(); err != nil || !ok {
				return fmt.Errorf("%s: block not back after restoring the snapshot (%v)", c.label(), err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *contender) Close() {
	if c.mon != nil {
		c.mon.Close()
	}
	if c.poller != nil {
		// The loop's sleep is its own child: end the whole process group.
		_ = syscall.Kill(-c.poller.Pid(), syscall.SIGTERM)
	}
	if c.agent != nil {
		_ = c.agent.Stop(5 * time.Second)
		if c.logDir != "" && os.MkdirAll(c.logDir, 0o755) == nil {
			name := strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(c.label()) + ".log"
			_ = os.WriteFile(filepath.Join(c.logDir, name), []byte(c.agent.Log()), 0o644)
		}
	}
	if c.sb != nil {
		if err := c.sb.Close(); err != nil {
			c.logf("closing %s: %v", c.label(), err)
		}
	}
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
