package main

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

// --- 2. exposure ---

type exposureResult struct {
	Label    string
	Drifts   int
	Issued   int
	Answered int
	Spacing  time.Duration // measured mean gap between probe starts
	Duration time.Duration
}

// probeScript loops n times: every 10 ms a background HTTP GET to IMDS;
// answered probes print "A <uptime>", and every `every` probes it prints
// "I <count> <uptime>". Only builtins run in the loop itself, so the
// spacing holds; /proc/uptime has 10 ms resolution.
func probeScript(n, every int) string {
	return fmt.Sprintf(`printf 'GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: %[1]s\r\n\r\n' > /tmp/req
read up x < /proc/uptime; echo "S $up"
i=0
while [ $i -lt %[2]d ]; do
  ( nc -w 1 %[1]s 80 < /tmp/req 2>/dev/null | grep -q %[3]s && read u x < /proc/uptime && echo "A $u" ) &
  usleep 10000
  i=$((i+1))
  if [ $((i %% %[4]d)) -eq 0 ]; then read up x < /proc/uptime; echo "I $i $up"; fi
done
wait
echo "DONE $i"`, sandbox.IMDSv4, n, sandbox.InstanceID, every)
}

type probeLog struct {
	started  bool
	issued   int
	answered int
	spacing  time.Duration
	// The first run's timeline, in uptime seconds: when each answer came
	// back, and the probes sent so far at each "I" line.
	answers []float64
	marks   []probeMark
}

type probeMark struct {
	up     float64
	issued int
}

func parseProbeLog(out string) probeLog {
	var p probeLog
	var s0 float64
	runs, lastI := 0, 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "S": // a (re)started prober counts from 0 again
			runs++
			lastI = 0
			if runs == 1 {
				s0, _ = strconv.ParseFloat(f[1], 64)
				p.marks = append(p.marks, probeMark{up: s0})
			}
			p.started = true
		case "A":
			p.answered++
			if runs == 1 {
				u, _ := strconv.ParseFloat(f[1], 64)
				p.answers = append(p.answers, u)
			}
		case "I":
			i, _ := strconv.Atoi(f[1])
			p.issued += i - lastI
			lastI = i
			if runs == 1 && len(f) > 2 {
				u, _ := strconv.ParseFloat(f[2], 64)
				p.marks = append(p.marks, probeMark{up: u, issued: i})
			}
		}
	}
	if n := len(p.marks); n > 1 && p.marks[n-1].up > s0 {
		p.spacing = time.Duration((p.marks[n-1].up - s0) / float64(p.marks[n-1].issued) * float64(time.Second))
	}
	return p
}

// sentBy interpolates the probes sent by uptime u from the "I" lines.
func (p probeLog) sentBy(u float64) float64 {
	m := p.marks
	if len(m) == 0 || u <= m[0].up {
		return 0
	}
	for i := 1; i < len(m); i++ {
		if u <= m[i].up {
			a, b := m[i-1], m[i]
			return float64(a.issued) + float64(b.issued-a.issued)*(u-a.up)/(b.up-a.up)
		}
	}
	return float64(m[len(m)-1].issued)
}

func (c *contender) startProber(ctx context.Context, name string, maxDur time.Duration, extra ...string) error {
	return c.startProberEvery(ctx, name, maxDur, 100, extra...)
}

// startProberEvery starts a prober that reports its count every `every`
// probes.
func (c *contender) startProberEvery(ctx context.Context, name string, maxDur time.Duration, every int, extra ...string) error {
	n := int(maxDur / (10 * time.Millisecond))
	args := append([]string{"run", "-d", "--init", "--name", name}, extra...)
	args = append(args, sandbox.Image, "sh", "-c", probeScript(n, every))
	if _, err := c.sb.Docker(args...); err != nil {
		return err
	}
	end := time.Now().Add(20 * time.Second)
	for time.Now().Before(end) {
		out, _ := c.sb.Docker("logs", name)
		if strings.Contains(out, "S ") {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("prober %s did not start", name)
}

func (c *contender) stopProber(name string) (probeLog, error) {
	// Probes still in flight give up after nc's 1 s.
	time.Sleep(1500 * time.Millisecond)
	out, err := c.sb.Docker("logs", name)
	_, _ = c.sb.Docker("rm", "-f", name)
	if err != nil {
		return probeLog{}, err
	}
	return parseProbeLog(out), nil
}

func scenarioExposure(ctx context.Context, c *contender, cfg *config, res *results) error {
	drifts := cfg.expDrifts
	switch {
	case c.kind != kindImdsguard:
		drifts = cfg.expDriftsBaseline
	case c.backend == sandbox.BackendLegacy:
		drifts = cfg.expDriftsLegacy
	}
	_, _, _, settleMin, jitter := c.repairPlan(cfg)
	if c.kind == kindPoll {
		jitter = 0 // the window is capped anyway: the poll phase only matters inside it
	}
	window := cfg.expWindow
	maxDur := time.Duration(drifts)*(window+settleMin+jitter+time.Second) + 60*time.Second
	c.logf("%s: scenario 2, %d drifts under a 10 ms IMDS prober", c.label(), drifts)
	if err := c.startProber(ctx, "prober", maxDur); err != nil {
		return err
	}
	start := time.Now()
	err := c.driftSeries(ctx, "exposure", drifts, window, settleMin, jitter, func(s sample) { res.add(s) })
	dur := time.Since(start)
	p, perr := c.stopProber("prober")
	if err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	res.mu.Lock()
	res.exposure = append(res.exposure, exposureResult{Label: c.label(), Drifts: drifts, Issued: p.issued, Answered: p.answered, Spacing: p.spacing, Duration: dur})
	res.mu.Unlock()
	return nil
}
