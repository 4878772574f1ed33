package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

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
