package main

import (
	"context"
	"fmt"
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
	logDir  string // where the agent's log is kept after Close
	// agentArgv starts imdsguard again (scenario 7's restarts).
	agentArgv []string
	warned    atomic.Bool // iptables-save's stderr was logged once
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
		c.agentArgv = []string{bin, "run",
			"--docker-host", sb.DockerHost, "--status-socket", sock, "--metrics-addr", "",
			"--host-root", hostRoot, "--resync-interval", resync.String(), "--log-format", "json",
			"--exempt-label", agent.ExampleExemptLabel, "--awsvpc-mode", "enforce"}
		if err := c.startAgent(); err != nil {
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

// startAgent starts imdsguard; its log is appended to the last one's.
func (c *contender) startAgent() (err error) {
	c.agent, err = c.sb.StartProcess("imdsguard", c.agentArgv[0], c.agentArgv[1:]...)
	return err
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
