package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/attempts"
	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// TestBlockedAttempts: a bridge task container, a container on a
// user-defined network, a host-network task container (cgroup v2) and an
// awsvpc task's container each try IMDS once; each attempt is in the log,
// the metric, the status and the audit log with its own container and
// task, and a container that never tried is nowhere. Then address reuse: A
// probes and goes, B gets A's address and probes at once: B's attempts are
// B's.
func TestBlockedAttempts(t *testing.T) {
	e := newEnv(t, sandbox.Options{CgroupV2: true})
	s := e.s
	const acct = "arn:aws:ecs:us-east-1:123456789012:task/e2e/"
	type want struct {
		container, arn, family, rev, ecsName, mode, by string
	}
	run := func(name, arn, family, ecsName string, args ...string) {
		t.Helper()
		if arn != "" {
			args = append(args, ecsLabels(arn, family, ecsName)...)
			args = append(args, "--label", agent.LabelTaskRevision+"=7")
		}
		if _, err := s.RunContainer(name, args...); err != nil {
			t.Fatal(err)
		}
	}
	run("brtask", acct+"brtask", "web", "app")
	if err := s.CreateNetwork("attnet", "172.31.0.0/24", "fd00:ec2:d2::/64"); err != nil {
		t.Fatal(err)
	}
	run("onnet", "", "", "", "--network", "attnet")
	run("hostc", acct+"hostc", "mon", "collector", "--network", "host")
	task := newSimTask(t, s, "atask", 4, false)
	run("atask-app", acct+"atask", "atask", "app", "--network", "container:"+task.pause, "--cap-add", "NET_ADMIN")
	run("quiet", acct+"quiet", "quiet", "idle")

	audit := filepath.Join(s.Dir, "attempts.json")
	e.startAgent(t, "--block-host-network", "--awsvpc-mode", "enforce", "--audit-log", audit)
	waitFor(t, "protected, with the task's table and the host container blocked", 60*time.Second, func() bool {
		st, err := status.QueryStatus(t.Context(), e.socket)
		if err != nil || st.Verdict != status.VerdictProtected || st.AWSVPC == nil || len(st.AWSVPC.Tasks) != 1 {
			return false
		}
		n := st.AWSVPC.Tasks[0].NFTables
		return n != nil && n.Present && hostContainer(st, "hostc").Blocked
	})

	wants := map[string]want{
		"brtask":    {"brtask", acct + "brtask", "web", "7", "app", docker.ModeBridge, "bridge port "},
		"onnet":     {"onnet", "", "", "", "", docker.ModeUserNet, "bridge port "},
		"hostc":     {"hostc", acct + "hostc", "mon", "7", "collector", docker.ModeHost, "cgroup "},
		"atask-app": {"atask-app", acct + "atask", "atask", "", "app", docker.ModeAWSVPC, "task namespace"},
	}
	for c := range wants {
		if c == "atask-app" {
			continue
		}
		if err := s.Probe(c, sandbox.IMDSv4, 80, time.Second); !errors.Is(err, sandbox.ErrTimeout) {
			t.Fatalf("%s reached IMDS, or failed otherwise: %v", c, err)
		}
	}
	// In an awsvpc task the blackhole route refuses the connect (EINVAL)
	// before any packet exists: the task's table sees only what gets past
	// the routes. So the task's container, which holds NET_ADMIN, routes
	// around them while the agent is frozen (nothing repairs), and the
	// table drops its packet; the agent reads it once it runs again.
	if err := s.Probe("atask-app", sandbox.IMDSv4, 80, time.Second); err == nil || errors.Is(err, sandbox.ErrTimeout) {
		t.Fatalf("the blackhole route should refuse the connect: %v", err)
	}
	if err := e.agent.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { _ = e.agent.Signal(syscall.SIGCONT) }
	t.Cleanup(cont)
	nsRun(t, task.netnsPath, "sh", "-c", "while ip rule del to 169.254.169.254 2>/dev/null; do :; done; "+
		"ip route del blackhole 169.254.169.254/32 2>/dev/null; "+
		"ip route add 169.254.169.254/32 via 192.0.2.17 dev eth1 table 100 && ip rule add to 169.254.169.254 lookup 100 priority 1")
	err := s.Probe("atask-app", sandbox.IMDSv4, 80, time.Second)
	cont()
	if !errors.Is(err, sandbox.ErrTimeout) {
		t.Fatalf("routed around inside the task: want the table's drop, got %v", err)
	}
	var st *status.Status
	defer func() {
		if t.Failed() && st != nil {
			tables, _ := s.HostRun("nft", "list", "table", "inet", "imdsguard")
			t.Logf("attempts %+v %+v\nnftables %+v\nhost network %+v\n%s", st.Attempts, st.BlockedAttempts, st.Firewall.NFTables, st.HostNetwork, tables)
		}
	}()
	waitFor(t, "an attempt of each container in status", 30*time.Second, func() bool {
		st = e.status(t)
		seen := map[string]bool{}
		for _, a := range st.BlockedAttempts {
			seen[a.Name] = true
		}
		return len(seen) >= len(wants)
	})
	out := e.statusText(t)
	t.Logf("imdsguard status:\n%s", out)
	for _, a := range st.BlockedAttempts {
		w, ok := wants[a.Name]
		if !ok || !a.Attributed {
			t.Fatalf("an attempt nobody made: %+v", a)
		}
		rev := a.TaskRevision
		if a.NetworkMode == docker.ModeAWSVPC {
			rev = "" // the pause container's labels carry no revision here
		}
		if a.TaskARN != w.arn || a.TaskFamily != w.family || rev != w.rev || a.ECSContainer != w.ecsName ||
			a.NetworkMode != w.mode || !strings.HasPrefix(a.By, w.by) || a.Image == "" ||
			a.Family != "ipv4" || a.Proto != "tcp" || a.Dst != sandbox.IMDSv4 || a.DstPort != 80 || a.TCPFlags != "SYN" || a.Token != nil {
			t.Fatalf("attempt of %s: %+v, want %+v", a.Name, a, w)
		}
	}
	if st.Attempts == nil || st.Attempts.Lost != 0 || st.Attempts.Error != "" {
		t.Fatalf("attempts status: %+v", st.Attempts)
	}
	if !strings.Contains(out, "blocked attempts:") || !strings.Contains(out, "task "+acct+"brtask (family web:7, container app") {
		t.Fatalf("status text lacks the attempts")
	}

	// The log: the first attempt of each container at once, by task.
	log := e.agent.Log()
	for c, w := range wants {
		who := "container " + c
		if w.arn != "" {
			who = "task " + w.arn
		}
		if !strings.Contains(log, "blocked the first attempt from "+who) {
			t.Fatalf("no log line for %s (%q):\n%s", c, who, tailLines(log, 30))
		}
	}
	if strings.Contains(log, "quiet") && strings.Contains(log, "attempt from task "+acct+"quiet") {
		t.Fatal("the quiet container is in the attempt log")
	}

	// The metric.
	metrics, err := s.HostRun("sh", "-c", `printf 'GET /metrics HTTP/1.0\r\n\r\n' | busybox nc 127.0.0.1 9721`)
	if err != nil {
		t.Fatal(err)
	}
	for _, series := range []string{
		`imdsguard_blocked_attempts_total{container_name="app",family="ipv4",task_family="web"}`,
		`imdsguard_blocked_attempts_total{container_name="onnet",family="ipv4",task_family=""}`,
		`imdsguard_blocked_attempts_total{container_name="collector",family="ipv4",task_family="mon"}`,
		`imdsguard_blocked_attempts_total{container_name="app",family="ipv4",task_family="atask"}`,
		`imdsguard_attempt_events_lost_total 0`,
	} {
		if !strings.Contains(metrics, series) {
			t.Fatalf("metrics lack %s:\n%s", series, grepLines(metrics, "attempt"))
		}
	}
	if strings.Contains(metrics, `task_family="quiet"`) || strings.Contains(metrics, `container_name=""`) {
		t.Fatalf("a series for nobody:\n%s", grepLines(metrics, "attempt"))
	}

	// The audit log: one JSON object per attempt.
	lines := auditLines(t, audit)
	if len(lines) != int(st.Attempts.Total) && len(lines) < len(wants) {
		t.Fatalf("audit log: %d lines, status %d attempts", len(lines), st.Attempts.Total)
	}
	for _, a := range lines {
		if _, ok := wants[a.Name]; !ok || !a.Attributed {
			t.Fatalf("audit log names %+v", a)
		}
	}

	t.Run("address reuse", func(t *testing.T) {
		const ip = "172.31.0.50"
		run("reuse-a", acct+"reuse-a", "reuse-a", "app", "--network", "attnet", "--ip", ip)
		waitFor(t, "reuse-a in a published table", 30*time.Second, func() bool {
			return containerListed(e.status(t), "reuse-a")
		})
		if err := s.Probe("reuse-a", sandbox.IMDSv4, 80, time.Second); !errors.Is(err, sandbox.ErrTimeout) {
			t.Fatal(err)
		}
		waitFor(t, "reuse-a's attempt", 30*time.Second, func() bool { return countBy(e.status(t), "reuse-a") > 0 })
		if _, err := s.Docker("rm", "-f", "reuse-a"); err != nil {
			t.Fatal(err)
		}
		gone := countBy(e.status(t), "reuse-a")
		// B takes the address and probes as its first act, before any
		// pass of the agent can have listed it; then it stays up.
		args := append([]string{"run", "-d", "--init", "--name", "reuse-b", "--network", "attnet", "--ip", ip,
			"--label", agent.LabelTaskRevision + "=7"}, ecsLabels(acct+"reuse-b", "reuse-b", "app")...)
		args = append(args, sandbox.Image, "sh", "-c", "for i in 1 2 3; do nc -w 1 "+sandbox.IMDSv4+" 80; done; exec sleep 86400")
		if _, err := s.Docker(args...); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "reuse-b's attempts", 30*time.Second, func() bool { return countBy(e.status(t), "reuse-b") >= 3 })
		st := e.status(t)
		if n := countBy(st, "reuse-a"); n != gone {
			t.Fatalf("reuse-a has %d attempts after it was removed, had %d", n, gone)
		}
		for _, a := range st.BlockedAttempts {
			if a.Src == ip && a.Name != "reuse-a" && a.Name != "reuse-b" || !a.Attributed {
				t.Fatalf("attempt from %s: %+v", ip, a)
			}
		}
		for _, a := range st.BlockedAttempts {
			if a.Src == ip {
				t.Logf("%s %s by %s (owner table %d)", a.At.Format("15:04:05.000"), a.Name, a.By, a.TableVersion)
			}
		}
		t.Logf("reuse-a: %d attempts, reuse-b: %d", gone, countBy(st, "reuse-b"))
	})

	// A container dockerd starts again by its restart policy keeps its ID
	// and gets a new veth, and it tries IMDS from its first moment, before
	// the agent's first listing after the restart: every attempt is still
	// its own, none "no container known".
	t.Run("after a dockerd restart", func(t *testing.T) {
		args := append([]string{"run", "-d", "--init", "--name", "again", "--network", "attnet", "--restart", "always"}, ecsLabels(acct+"again", "again", "app")...)
		args = append(args, sandbox.Image, "sh", "-c", "while :; do ( nc -w 1 "+sandbox.IMDSv4+" 80 </dev/null ) & usleep 100000; done")
		if _, err := s.Docker(args...); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "again's attempts", 30*time.Second, func() bool { return countBy(e.status(t), "again") > 0 })
		if err := s.RestartDockerd(t.Context()); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		waitFor(t, "again listed after the restart", 60*time.Second, func() bool {
			st, err := status.QueryStatus(t.Context(), e.socket)
			return err == nil && st.Docker.Reachable && st.Docker.ListedAt.After(restarted) && containerListed(st, "again")
		})
		listed := time.Now()
		// Attempts from before the listing are decided within the wait
		// after it; those are the ones at stake.
		var st *status.Status
		waitFor(t, "attempts from after the listing decided", 30*time.Second, func() bool {
			st = e.status(t)
			for _, a := range st.BlockedAttempts {
				if a.At.After(listed.Add(attempts.PendingWait)) {
					return true
				}
			}
			return false
		})
		byAgain, other := 0, []string{}
		for _, a := range st.BlockedAttempts {
			if !a.At.After(restarted.Add(-time.Second)) {
				continue
			}
			if a.Name == "again" && a.Attributed && strings.HasPrefix(a.By, "bridge port ") {
				byAgain++
			} else {
				other = append(other, fmt.Sprintf("%s %s attributed %v by %q", a.At.Format("15:04:05.000"), a.Name, a.Attributed, a.By))
			}
		}
		t.Logf("after the restart: %d attempts by again's bridge port, %d otherwise", byAgain, len(other))
		if len(other) > 0 || byAgain == 0 {
			t.Fatalf("attempts after the dockerd restart not again's by its port:\n%s", strings.Join(other, "\n"))
		}
	})
}

func containerListed(st *status.Status, name string) bool {
	for _, c := range st.Containers {
		if c.Name == name {
			return true
		}
	}
	return false
}

func countBy(st *status.Status, name string) int {
	n := 0
	for _, a := range st.BlockedAttempts {
		if a.Name == name {
			n++
		}
	}
	return n
}

func auditLines(t *testing.T, path string) []attempts.Attempt {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []attempts.Attempt
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var a attempts.Attempt
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, a)
	}
	return out
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return fmt.Sprint(strings.Join(out, "\n"))
}

// statusText is `imdsguard status` (which reads only --status-socket).
func (e *env) statusText(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := e.s.HostCommand(ctx, agentBin, "status", "--status-socket", e.socket).CombinedOutput()
	if err != nil {
		t.Fatalf("imdsguard status: %v\n%s", err, out)
	}
	return string(out)
}
