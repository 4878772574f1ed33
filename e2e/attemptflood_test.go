package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// TestAttemptFlood is the blocked-attempt benchmark, not part of make test:
// IMDSGUARD_ATTEMPT_FLOOD=60s runs it (make bench-attempts). A bridged task
// container starts 10,000 TCP connections a second to IMDS for that long
// while the IMDS-GUARD chain is flushed every 5 s. It reports the agent's
// CPU and peak RSS (idle, then flooded), how many attempts were recorded
// and how many events were lost, and how long each flush took to repair;
// IMDSGUARD_ATTEMPT_FLOOD_OUT=FILE writes the figures as Markdown. What it
// checks is behaviour, not speed: no probe answered, every recorded attempt
// the flooder's, every repair done.
func TestAttemptFlood(t *testing.T) {
	d := os.Getenv("IMDSGUARD_ATTEMPT_FLOOD")
	if d == "" {
		t.Skip("the attempt flood benchmark: set IMDSGUARD_ATTEMPT_FLOOD=60s (make bench-attempts)")
	}
	dur, err := time.ParseDuration(d)
	if err != nil {
		t.Fatal(err)
	}
	const rate = 10000
	bin := filepath.Join(t.TempDir(), "imdsflood")
	if out, err := exec.Command("go", "build", "-o", bin, "./imdsflood").CombinedOutput(); err != nil {
		t.Fatalf("building imdsflood: %v\n%s", err, out)
	}
	e := newEnv(t, sandbox.Options{})
	s := e.s
	arn := "arn:aws:ecs:us-east-1:123456789012:task/e2e/flood"
	if _, err := s.RunContainer("flooder", ecsLabels(arn, "flood", "app")...); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunContainer("bystander"); err != nil {
		t.Fatal(err)
	}
	e.startAgent(t, "--log-level", "info")
	e.waitProtected(t)
	pid, err := s.Docker("inspect", "-f", "{{.State.Pid}}", "flooder")
	if err != nil {
		t.Fatal(err)
	}
	apid := e.agent.Pid()

	idleCPU, idleUse := cpuOver(t, apid, 10*time.Second)
	smp := sample(apid)
	cpu0 := cpuTicks(t, apid)
	start := time.Now()
	cmd := exec.Command("nsenter", "--net=/proc/"+strings.TrimSpace(pid)+"/ns/net", "--", bin,
		"-rate", strconv.Itoa(rate), "-for", dur.String())
	done := make(chan string, 1)
	go func() {
		out, err := cmd.CombinedOutput()
		done <- fmt.Sprintf("%s %v", strings.TrimSpace(string(out)), err)
	}()
	var repairs []time.Duration
	var answered int
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	var flooder string
loop:
	for {
		select {
		case flooder = <-done:
			break loop
		case <-tick.C:
			if _, err := s.HostRun("iptables", "-F", "IMDS-GUARD"); err != nil {
				t.Fatal(err)
			}
			at := time.Now()
			for {
				out, _ := s.HostRun("iptables", "-S", "IMDS-GUARD")
				if strings.Contains(out, "-j DROP") {
					repairs = append(repairs, time.Since(at))
					break
				}
				if time.Since(at) > 30*time.Second {
					t.Fatal("IMDS-GUARD not repaired within 30 s under the flood")
				}
			}
			if body, err := s.ReadIMDS("bystander"); err == nil {
				answered++
				t.Errorf("the bystander read IMDS during the flood: %q", body)
			}
		}
	}
	elapsed := time.Since(start)
	floodCPU := float64(cpuTicks(t, apid)-cpu0) / clockTicks / elapsed.Seconds() * 100
	peak := smp.end()

	var st *status.Status
	waitFor(t, "the recorder caught up", 30*time.Second, func() bool {
		st = e.status(t)
		return st.Attempts != nil && st.Attempts.Total > 0
	})
	st = e.status(t)
	// The bystander's own reads are attempts too, and its own.
	for _, a := range st.BlockedAttempts {
		if !(a.Name == "flooder" && a.TaskARN == arn || a.Name == "bystander" && a.TaskARN == "") {
			t.Errorf("an attempt misattributed: %+v", a)
		}
	}
	byst := 0
	if metrics, err := s.HostRun("sh", "-c", `printf 'GET /metrics HTTP/1.0\r\n\r\n' | busybox nc 127.0.0.1 9721`); err == nil {
		for _, l := range strings.Split(metrics, "\n") {
			if strings.HasPrefix(l, `imdsguard_blocked_attempts_total{container_name="bystander"`) {
				f := strings.Fields(l)
				byst, _ = strconv.Atoi(f[len(f)-1])
			}
		}
	}
	worst := time.Duration(0)
	for _, r := range repairs {
		worst = max(worst, r)
	}
	kernelLimit := int(elapsed.Seconds())*100 + 200
	rep := fmt.Sprintf(`# Blocked-attempt flood (%s)

| | |
|---|---|
| flooder | %s, %d connections a second for %s |
| kernel | layer 1 drops every packet; the log rule passes at most 100 a second (burst 200) to NFLOG |
| attempts recorded | %d (the kernel's limit allows at most about %d) |
| events lost | %d |
| agent CPU, idle | %.2f %% of one core |
| agent CPU, flooded (with the flushes' repairs) | %.2f %% of one core |
| agent RSS, idle | %d KiB |
| agent RSS, peak while flooded | %d KiB |
| IMDS-GUARD flushes repaired | %d, worst %v |
| bystander reads of IMDS answered | %d |
| bystander attempts recorded meanwhile (one read after each flush) | %d |
`, time.Now().UTC().Format(time.RFC3339), flooder, rate, dur, st.Attempts.Total, kernelLimit, st.Attempts.Lost,
		idleCPU, floodCPU, idleUse.rssKB, peak.rssKB, len(repairs), worst.Round(time.Millisecond), answered, byst)
	t.Log("\n" + rep)
	if out := os.Getenv("IMDSGUARD_ATTEMPT_FLOOD_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(rep), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if int(st.Attempts.Total) > kernelLimit*2 {
		t.Errorf("%d attempts recorded: the kernel limit should allow about %d", st.Attempts.Total, kernelLimit)
	}
}

// clockTicks is USER_HZ, what /proc/PID/stat counts in.
const clockTicks = 100

// cpuTicks is a process's user plus system time, in clock ticks.
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// cpuOver measures a process's CPU (percent of one core) and peak use over d.
func cpuOver(t *testing.T, pid int, d time.Duration) (float64, agentUsage) {
	t.Helper()
	smp := sample(pid)
	c0, t0 := cpuTicks(t, pid), time.Now()
	time.Sleep(d) // a measurement window, not a wait for a condition
	c1 := cpuTicks(t, pid)
	return float64(c1-c0) / clockTicks / time.Since(t0).Seconds() * 100, smp.end()
}
