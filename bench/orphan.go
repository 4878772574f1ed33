package main

import (
	"context"
	"fmt"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

// Layer 1 where something can touch it: while imdsguard runs, its socket
// owns the tables and every other writer is refused. Once it stops they
// stay (persist) but orphaned, and anyone may delete them. Each round
// stops the agent, deletes the orphans on the host and in a task as a
// non-owner, and starts the agent again; the repair is timed from the new
// agent's exec (the deletion itself happened while nothing ran) to its
// first sync that read the table back, by the agent's own timestamps.

type orphanResult struct {
	Label      string
	Rounds     int
	Said       string    // what the deletions said (empty: they succeeded)
	Host, Task []float64 // ms, exec -> table verified
	Failed     int       // rounds without a verified table within the limit
}

func (c *contender) orphanRounds(ctx context.Context, task *sandbox.Task, rounds, tasks int) (orphanResult, error) {
	r := orphanResult{Label: c.label(), Rounds: rounds}
	for i := 0; i < rounds && ctx.Err() == nil; i++ {
		if err := c.agent.Stop(10 * time.Second); err != nil {
			return r, err
		}
		for _, del := range []func() (string, error){
			func() (string, error) { return c.sb.HostRun("nft", "delete", "table", "inet", "imdsguard") },
			func() (string, error) { return c.sb.HostRun("nft", "delete", "table", "bridge", "imdsguard") },
			func() (string, error) { return task.Run("nft", "delete", "table", "inet", "imdsguard") },
		} {
			if out, err := del(); err != nil && r.Said == "" {
				r.Said = lastLine(out)
			}
		}
		start := time.Now()
		if err := c.startAgent(); err != nil {
			return r, err
		}
		var host, tsk time.Time
		for end := start.Add(60 * time.Second); time.Now().Before(end) && (host.IsZero() || tsk.IsZero()); {
			if st, err := c.status.get(); err == nil {
				if n := st.Firewall.NFTables; host.IsZero() && n != nil && n.Present && n.Owned {
					host, _ = syncReadBack(st, start, "nftables")
				}
				if st.AWSVPC != nil && tsk.IsZero() {
					for _, t := range st.AWSVPC.Tasks {
						if t.Pause == task.Pause && t.NFTables != nil && t.NFTables.Present && t.NFTables.Owned {
							tsk, _ = syncReadBack(st, start, "awsvpc")
						}
					}
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		if host.IsZero() || tsk.IsZero() {
			r.Failed++
		} else {
			r.Host = append(r.Host, ms(host.Sub(start)))
			r.Task = append(r.Task, ms(tsk.Sub(start)))
		}
		if err := c.waitTasks(ctx, tasks, 2*time.Minute); err != nil {
			return r, fmt.Errorf("after restart %d: %w", i+1, err)
		}
		if err := c.waitProtected(ctx, 30*time.Second); err != nil {
			return r, err
		}
	}
	return r, ctx.Err()
}
