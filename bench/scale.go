package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

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
