package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// --- 1. drift repair latency ---

// repairPlan is how a contender is driven in scenario 1.
func (c *contender) repairPlan(cfg *config) (perKind int, total int, window, settleMin, jitter time.Duration) {
	switch {
	case c.kind == kindStatic:
		return 0, cfg.staticN, cfg.staticWindow, time.Second, 0
	case c.kind == kindPoll:
		return 0, cfg.pollN, pollInterval + 5*time.Second, time.Second, pollInterval
	case c.backend == sandbox.BackendNFT:
		return cfg.nftPerKind, 0, 5 * time.Second, 100 * time.Millisecond, 200 * time.Millisecond
	default:
		return cfg.legacyPerKind, 0, c.resync + 5*time.Second, 50 * time.Millisecond, c.resync
	}
}

func (c *contender) driftSeries(ctx context.Context, scenario string, n int, window, settleMin, jitter time.Duration, each func(sample)) error {
	for i := 0; i < n; i++ {
		kind := driftKinds[i%len(driftKinds)]
		snap, err := c.save()
		if err != nil {
			return err
		}
		if err := c.ensureBlocked(ctx, snap, 10*time.Second); err != nil {
			return err
		}
		snap, err = c.save()
		if err != nil {
			return err
		}
		s, err := c.measure(ctx, kind, window)
		if err != nil {
			return fmt.Errorf("%s drift %d (%s): %w", c.label(), i, kind, err)
		}
		s.Scenario = scenario
		each(s)
		if !s.Repaired {
			if err := c.restore(snap); err != nil {
				return err
			}
		}
		if i+1 < n {
			c.settle(ctx, settleMin, jitter)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

func scenarioRepair(ctx context.Context, c *contender, cfg *config, res *results) error {
	perKind, total, window, settleMin, jitter := c.repairPlan(cfg)
	if perKind > 0 {
		total = perKind * len(driftKinds)
	}
	c.logf("%s: scenario 1, %d drifts (window %v)", c.label(), total, window)
	start := time.Now()
	err := c.driftSeries(ctx, "repair", total, window, settleMin, jitter, func(s sample) {
		res.add(s)
	})
	c.logf("%s: scenario 1 done in %v", c.label(), time.Since(start).Round(time.Second))
	return err
}

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
// answered probes print "A <uptime>". Only builtins run in the loop itself,
// so the spacing holds; /proc/uptime has 10 ms resolution.
func probeScript(n int) string {
	return fmt.Sprintf(`printf 'GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: %[1]s\r\n\r\n' > /tmp/req
read up x < /proc/uptime; echo "S $up"
i=0
while [ $i -lt %[2]d ]; do
  ( nc -w 1 %[1]s 80 < /tmp/req 2>/dev/null | grep -q %[3]s && read u x < /proc/uptime && echo "A $u" ) &
  usleep 10000
  i=$((i+1))
  if [ $((i %% 100)) -eq 0 ]; then read up x < /proc/uptime; echo "I $i $up"; fi
done
wait
echo "DONE $i"`, sandbox.IMDSv4, n, sandbox.InstanceID)
}

type probeLog struct {
	started  bool
	issued   int
	answered int
	spacing  time.Duration
}

func parseProbeLog(out string) probeLog {
	var p probeLog
	var s0, lastUp float64
	runs, firstRunIssued := 0, 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "S": // a (re)started prober
			runs++
			if runs == 1 {
				s0, _ = strconv.ParseFloat(f[1], 64)
			}
			p.started = true
		case "A":
			p.answered++
		case "I": // every 100 probes
			p.issued += 100
			if runs == 1 && len(f) > 2 {
				firstRunIssued += 100
				lastUp, _ = strconv.ParseFloat(f[2], 64)
			}
		}
	}
	if firstRunIssued > 0 && lastUp > s0 {
		p.spacing = time.Duration((lastUp - s0) / float64(firstRunIssued) * float64(time.Second))
	}
	return p
}

func (c *contender) startProber(ctx context.Context, name string, maxDur time.Duration, extra ...string) error {
	n := int(maxDur / (10 * time.Millisecond))
	args := append([]string{"run", "-d", "--init", "--name", name}, extra...)
	args = append(args, sandbox.Image, "sh", "-c", probeScript(n))
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

// --- 3. dockerd restart ---

type restartResult struct {
	Label     string
	Restarts  int
	Resync    []time.Duration // dockerd answering -> agent resynced (imdsguard only)
	Issued    int
	Answered  int
	Unblocked int // iptables-save checks during the restarts that found no block
	Checks    int
}

func scenarioRestart(ctx context.Context, c *contender, cfg *config, res *results) error {
	c.logf("%s: scenario 3, %d dockerd restarts", c.label(), cfg.restarts)
	maxDur := time.Duration(cfg.restarts)*40*time.Second + 60*time.Second
	if err := c.startProber(ctx, "prober-restart", maxDur, "--restart", "always"); err != nil {
		return err
	}
	r := restartResult{Label: c.label(), Restarts: cfg.restarts}
	// Watch the ruleset through the whole restart, independent of probes.
	wctx, wcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var checks, unblocked atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for wctx.Err() == nil {
			if ok, err := c.isBlocked(); err == nil {
				checks.Add(1)
				if !ok {
					unblocked.Add(1)
				}
			}
			select {
			case <-wctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	var err error
	for i := 0; i < cfg.restarts && err == nil; i++ {
		err = c.restartOnce(ctx, &r)
	}
	wcancel()
	wg.Wait()
	r.Checks, r.Unblocked = int(checks.Load()), int(unblocked.Load())
	p, perr := c.stopProber("prober-restart")
	if err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	r.Issued, r.Answered = p.issued, p.answered
	res.mu.Lock()
	res.restarts = append(res.restarts, r)
	res.mu.Unlock()
	return nil
}

func (c *contender) restartOnce(ctx context.Context, r *restartResult) error {
	if err := c.sb.StopDockerd(); err != nil {
		return err
	}
	stopped := time.Now()
	upCh := make(chan time.Time, 1)
	pctx, pcancel := context.WithTimeout(ctx, 90*time.Second)
	defer pcancel()
	go func() {
		for pctx.Err() == nil {
			if c.docker.ping() {
				upCh <- time.Now()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	startErr := make(chan error, 1)
	go func() { startErr <- c.sb.StartDockerd(ctx) }()
	var up time.Time
	select {
	case up = <-upCh:
	case err := <-startErr:
		if err != nil {
			return err
		}
		up = <-upCh
	case <-pctx.Done():
		return fmt.Errorf("dockerd did not answer again")
	}
	if c.status != nil {
		var synced time.Time
		for time.Since(up) < 30*time.Second {
			st, err := c.status.get()
			if err == nil && st.Docker.Reachable && st.LastSync != nil && st.LastSync.At.After(stopped) && st.Firewall.IPv4.Enforced {
				synced = time.Now()
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if synced.IsZero() {
			return fmt.Errorf("%s: no resync within 30 s of dockerd answering", c.label())
		}
		r.Resync = append(r.Resync, synced.Sub(up))
		c.logf("%s: dockerd answering -> resynced in %v", c.label(), synced.Sub(up).Round(time.Millisecond))
	}
	if err := <-startErr; err != nil {
		return err
	}
	// Let the always-restart prober come back and probe a while.
	time.Sleep(3 * time.Second)
	return nil
}

// --- 4. footprint ---

type footprintResult struct {
	Label    string
	Phase    string // "idle" or "churn"
	Duration time.Duration
	CPUOwn   float64 // % of one core, the agent process
	CPUAll   float64 // including the iptables processes it runs
	RSSMed   float64 // MiB
	RSSMax   float64
	Note     string
}

type procSample struct {
	own, children uint64 // clock ticks
	rssKiB        uint64
}

func readProc(pid int) (procSample, error) {
	var p procSample
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return p, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:])
	// fields after ")": state(0) ... utime(11) stime(12) cutime(13) cstime(14)
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	cut, _ := strconv.ParseUint(f[13], 10, 64)
	cst, _ := strconv.ParseUint(f[14], 10, 64)
	p.own, p.children = ut+st, cut+cst
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			p.rssKiB, _ = strconv.ParseUint(strings.Fields(v)[0], 10, 64)
		}
	}
	return p, nil
}

const clkTck = 100 // USER_HZ on Linux

func (c *contender) footprint(ctx context.Context, phase string, d time.Duration, load func(ctx context.Context) string) (footprintResult, error) {
	pid := c.agent.Pid()
	r := footprintResult{Label: c.label(), Phase: phase}
	first, err := readProc(pid)
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	var rss []float64
	lctx, lcancel := context.WithTimeout(ctx, d)
	defer lcancel()
	noteCh := make(chan string, 1)
	if load != nil {
		go func() { noteCh <- load(lctx) }()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for lctx.Err() == nil {
		select {
		case <-lctx.Done():
		case <-tick.C:
			if p, err := readProc(pid); err == nil {
				rss = append(rss, float64(p.rssKiB)/1024)
			}
		}
	}
	last, err := readProc(pid)
	if err != nil {
		return r, err
	}
	el := time.Since(t0)
	r.Duration = el
	r.CPUOwn = float64(last.own-first.own) / clkTck / el.Seconds() * 100
	r.CPUAll = float64(last.own+last.children-first.own-first.children) / clkTck / el.Seconds() * 100
	rss = append(rss, float64(last.rssKiB)/1024)
	st := summarize(rss)
	r.RSSMed, r.RSSMax = st.med, st.max
	if load != nil {
		r.Note = <-noteCh
	}
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	return r, nil
}

func scenarioFootprint(ctx context.Context, c *contender, idle, churn time.Duration, res *results) error {
	c.logf("%s: scenario 4, idle %v", c.label(), idle)
	r, err := c.footprint(ctx, "idle", idle, nil)
	if err != nil {
		return err
	}
	res.addFootprint(r)
	if churn <= 0 {
		return nil
	}
	c.logf("%s: scenario 4, churn %v", c.label(), churn)
	r, err = c.footprint(ctx, "churn", churn, c.churn)
	if err != nil {
		return err
	}
	res.addFootprint(r)
	// Let the short-lived containers finish before the next scenario.
	end := time.Now().Add(30 * time.Second)
	for time.Now().Before(end) {
		if n, err := c.docker.running(); err == nil && n == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil
}

// churn starts a container every 50 ms (20 a second); each runs `sleep 1`
// and is removed when it exits, so about as many stop as start.
func (c *contender) churn(ctx context.Context) string {
	var started, failed atomic.Int64
	sem := make(chan struct{}, 8) // more in flight only queues in dockerd and drags the phase out
	var wg sync.WaitGroup
	t0 := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	attempted := 0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			continue
		case <-tick.C:
		}
		attempted++
		select {
		case sem <- struct{}{}:
		default:
			failed.Add(1) // dockerd is behind: the rate is not reached
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := c.docker.run(sandbox.Image, []string{"sleep", "1"}, true, nil); err != nil {
				failed.Add(1)
				return
			}
			started.Add(1)
		}()
	}
	el := time.Since(t0)
	wg.Wait()
	return fmt.Sprintf("%d containers started (%.1f/s achieved of 20/s asked), %d skipped or failed", started.Load(), float64(started.Load())/el.Seconds(), failed.Load())
}

// --- 5. scale ---

type scaleResult struct {
	Label      string
	Containers int
	Exempt     int // of Containers, labelled imdsguard.allow-imds=true
	StartTook  time.Duration
	SyncMS     []float64            // agent-reported sync durations with N containers
	StagesMS   map[string][]float64 // the same syncs, split by stage
	ListMS     []float64            // agent-reported dockerd list durations, one per listing
	Repair     []sample
	Profile    []byte // the agent's CPU profile over the measurement
	ProfileFor time.Duration
	// Set by writeReport.
	ProfilePath, ProfileTop string
}

func scenarioScale(ctx context.Context, c *contender, n int, drifts int, res *results) error {
	exempt := n / 2
	c.logf("%s: scenario 5, starting %d containers, %d of them exempt", c.label(), n, exempt)
	label := strings.SplitN(agent.ExampleExemptLabel, "=", 2)
	t0 := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 6)
	var failed atomic.Int64
	for i := 0; i < n && ctx.Err() == nil; i++ {
		var labels map[string]string
		if i%2 == 0 && i/2 < exempt {
			labels = map[string]string{label[0]: label[1]}
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := c.docker.run(sandbox.Image, []string{"sleep", "86400"}, false, labels); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d containers failed to start", f, n)
	}
	r := &scaleResult{Label: c.label(), Containers: n, Exempt: exempt, StartTook: time.Since(t0), StagesMS: map[string][]float64{}}
	c.logf("%s: %d containers up in %v", c.label(), n, r.StartTook.Round(time.Second))
	// Wait for the agent to see them all, and to exempt half.
	end := time.Now().Add(120 * time.Second)
	for {
		st, err := c.status.get()
		if err == nil && len(st.Containers) >= n && len(st.Exemptions) == exempt && st.Verdict == status.VerdictProtected {
			break
		}
		if time.Now().After(end) {
			if err == nil {
				err = fmt.Errorf("%d containers, %d exemptions, verdict %s", len(st.Containers), len(st.Exemptions), st.Verdict)
			}
			return fmt.Errorf("agent does not report %d containers with %d exempt: %w", n, exempt, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Sync durations: whatever syncs happen while drifts are repaired and
	// the resync timer runs; each distinct pass (and listing) counted once.
	seen, listed := map[time.Time]bool{}, map[time.Time]bool{}
	collect := func() {
		st, err := c.status.get()
		if err != nil || st.LastSync == nil {
			return
		}
		if at := st.Docker.ListedAt; !at.IsZero() && !listed[at] {
			listed[at] = true
			r.ListMS = append(r.ListMS, st.Docker.ListMS)
		}
		if !seen[st.LastSync.At] {
			seen[st.LastSync.At] = true
			r.SyncMS = append(r.SyncMS, st.LastSync.DurationMS)
			for k, v := range st.LastSync.StagesMS {
				r.StagesMS[k] = append(r.StagesMS[k], v)
			}
		}
	}
	collect()
	// The agent's own CPU over everything below: what a profile of a sync
	// at this scale shows.
	r.ProfileFor = 20 * time.Second
	prof := make(chan error, 1)
	go func() {
		var err error
		r.Profile, err = c.status.profile(r.ProfileFor)
		prof <- err
	}()
	if err := c.driftSeries(ctx, "scale", drifts, 10*time.Second, 300*time.Millisecond, 300*time.Millisecond, func(s sample) {
		r.Repair = append(r.Repair, s)
		time.Sleep(100 * time.Millisecond) // the echo pass after the repair
		collect()
	}); err != nil {
		return err
	}
	for i := 0; i < 60 && ctx.Err() == nil; i++ { // two resync periods at 5 s
		collect()
		time.Sleep(200 * time.Millisecond)
	}
	if err := <-prof; err != nil {
		res.fail(c.label()+": scale profile", err)
	}
	res.mu.Lock()
	res.scale = r
	res.mu.Unlock()
	return nil
}
