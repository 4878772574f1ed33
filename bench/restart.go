package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

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
