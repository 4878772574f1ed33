package main

import (
	"context"
	"fmt"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
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
