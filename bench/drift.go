package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Drifts, and timing their repair from outside the agent.

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
		if c.kind == kindImdsguard {
			// Both of its jumps, in one transaction: either alone blocks.
			_, err = c.sb.HostRun("sh", "-c", deleteEvery("FORWARD -j IMDS-GUARD", "DOCKER-USER -j IMDS-GUARD"))
			break
		}
		_, err = c.sb.HostRun("iptables", append([]string{"-w", "-D", "DOCKER-USER"}, c.rule()...)...)
	case "docker-user-flushed":
		// For imdsguard no drift any more: its FORWARD jump still blocks,
		// and the sample says 0 (the block never opened).
		_, err = c.sb.HostRun("iptables", "-w", "-F", "DOCKER-USER")
	case "forward-jump-removed":
		// Every unconditional FORWARD jump that leads to the block, in one
		// transaction: Docker's to DOCKER-USER, and imdsguard's own to
		// IMDS-GUARD. Deleting one of two leaves the block whole, which is
		// no drift at all.
		_, err = c.sb.HostRun("sh", "-c", deleteEvery("FORWARD -j DOCKER-USER", "FORWARD -j IMDS-GUARD"))
	case "restore-without-rule":
		// An old saved ruleset restored over the live one (full table, no
		// --noflush), as a config-management run or a boot script would.
		lines := "-e '-A DOCKER-USER " + strings.Join(c.rule(), " ") + "'"
		if c.kind == kindImdsguard {
			lines += " -e '-A FORWARD -j IMDS-GUARD'" // its other jump, which alone blocks
		}
		_, err = c.sb.HostRun("sh", "-c", fmt.Sprintf(`iptables-save -t filter | grep -v -x %s | iptables-restore -w`, lines))
	default:
		err = fmt.Errorf("unknown drift %q", kind)
	}
	return err
}

// deleteEvery is a shell script that deletes every copy of each rule ("CHAIN
// spec", as iptables -S prints it after -A) in one iptables-restore
// transaction.
func deleteEvery(rules ...string) string {
	var b strings.Builder
	b.WriteString(`s=$(iptables-save -t filter); { echo '*filter'; `)
	for _, r := range rules {
		fmt.Fprintf(&b, `printf '%%s\n' "$s" | grep -x -- '-A %s' | sed 's/^-A /-D /'; `, r)
	}
	b.WriteString(`echo COMMIT; } | iptables-restore -w --noflush`)
	return b.String()
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
	// Check at once: a drift that leaves the block whole (imdsguard's
	// FORWARD jump after -F DOCKER-USER) measures 0.
	pending := true // a commit may have arrived during the last check
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
