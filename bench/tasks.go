package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/imdsguard/imdsguard/docker"
	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

// awsvpc tasks for scenario 7: pause containers with an ENI each, made by
// e2e/sandbox, labelled as the ECS agent labels them.

func taskLabels(name, container string) []string {
	arn := "arn:aws:ecs:us-east-1:123456789012:task/bench/" + name
	return []string{
		"--label", docker.LabelTaskARN + "=" + arn,
		"--label", docker.LabelTaskFamily + "=" + name,
		"--label", docker.LabelContainerName + "=" + container,
	}
}

// startTasks starts n tasks, each with the blackhole ECS adds
// (ECS_AWSVPC_BLOCK_IMDS=true): every contender starts from what ECS does.
func (c *contender) startTasks(ctx context.Context, n int) ([]*sandbox.Task, error) {
	tasks := make([]*sandbox.Task, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			name := fmt.Sprintf("task%02d", i+1)
			tasks[i], errs[i] = c.sb.NewTask(name+"-pause", i+1, true, taskLabels(name, docker.PauseContainerName)...)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return tasks, ctx.Err()
}

// waitTasks waits until the agent reports every task protected with its
// own layer-1 table owned.
func (c *contender) waitTasks(ctx context.Context, n int, limit time.Duration) error {
	end := time.Now().Add(limit)
	last := "no status"
	for time.Now().Before(end) {
		st, err := c.status.get()
		if err == nil && st.AWSVPC != nil {
			ok := 0
			for _, t := range st.AWSVPC.Tasks {
				if t.Protected && t.NFTables != nil && t.NFTables.Present && t.NFTables.Owned {
					ok++
				}
			}
			if ok >= n {
				return nil
			}
			last = fmt.Sprintf("%d of %d tasks protected with layer 1 owned", ok, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: %s after %v", c.label(), last, limit)
}

// taskRoutesBack waits until the agent reports the task's routing block
// (blackhole and guard rule, no escape) back: layer 2 in the task.
func (c *contender) taskRoutesBack(ctx context.Context, pause string, limit time.Duration) bool {
	end := time.Now().Add(limit)
	for time.Now().Before(end) && ctx.Err() == nil {
		if st, err := c.status.get(); err == nil && st.AWSVPC != nil {
			for _, t := range st.AWSVPC.Tasks {
				if t.Pause == pause && t.IPv4Route && t.IPv4Guard && t.Escape == "" {
					return true
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// taskDrift breaks the routing block inside the task, as a container of
// the task with NET_ADMIN can (the harness enters the task's network
// namespace with the same capability).
func taskDrift(t *sandbox.Task, kind string) (string, error) {
	switch kind {
	case "task-route-deleted":
		// Every rule and blackhole route to IMDS: ECS's route and, with
		// imdsguard, its guard rule.
		return t.Run("sh", "-c", "while ip rule del to "+sandbox.IMDSv4+" 2>/dev/null; do :; done; "+
			"while ip route del blackhole "+sandbox.IMDSv4+"/32 2>/dev/null; do :; done")
	case "task-policy-rule":
		// A way of its own, ahead of the main table's blackhole.
		return t.Run("sh", "-c", "ip route add "+sandbox.IMDSv4+"/32 via "+t.IMDSSide+" dev eth1 table 100 && "+
			"ip rule add to "+sandbox.IMDSv4+" lookup 100 priority 1")
	case "task-nft-flush":
		return t.Run("nft", "flush", "ruleset")
	}
	return "", fmt.Errorf("unknown task drift %q", kind)
}

// undoTaskDrift puts back what ECS made: no rule or route of the task's
// own, the blackhole in main.
func undoTaskDrift(t *sandbox.Task) error {
	_, err := t.Run("sh", "-c", "while ip rule del priority 1 2>/dev/null; do :; done; "+
		"ip route flush table 100 2>/dev/null; ip route replace blackhole "+sandbox.IMDSv4+"/32")
	return err
}

var counterRE = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// layer1Listing is imdsguard's tables in one namespace as `nft -a` lists
// them, counters left out: a table deleted and made again, or any chain or
// rule changed, lists with other handles or content.
func layer1Listing(run func(string, ...string) (string, error), families ...string) string {
	var b strings.Builder
	for _, fam := range families {
		out, err := run("nft", "-a", "list", "table", fam, "imdsguard")
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", fam, err)
			continue
		}
		b.WriteString(counterRE.ReplaceAllString(out, "counter"))
	}
	return b.String()
}
