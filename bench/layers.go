package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// --- 7. both layers: exposure by drift kind, layer 1's read-back, idle with tasks ---

// Drift kinds of scenario 7: in the host namespace, then inside an awsvpc
// task with NET_ADMIN.
var (
	hostLayerKinds = []string{"docker-user-flushed", "forward-flushed", "restore-without-rule", "nft-flush-ruleset", "nft-delete-table"}
	taskLayerKinds = []string{"task-route-deleted", "task-policy-rule", "task-nft-flush"}
	layerKinds     = append(append([]string{}, hostLayerKinds...), taskLayerKinds...)
)

func isTaskKind(k string) bool { return strings.HasPrefix(k, "task-") }

// layerDrift is one drift of scenario 7.
type layerDrift struct {
	kind       string
	start, end float64 // uptime: before the drift command; block verified back
	said       string  // the drift command's error, when it failed as expected
	touched    bool    // layer 1 lists differently after the drift
	readBack   float64 // ms, drift commit -> the agent's next read-back of layer 1; -1: none seen
	notBack    bool    // the block was not back within the limit
}

// layerRow is one drift kind for one contender.
type layerRow struct {
	Kind                 string
	Drifts               int
	SentBridge, SentTask int
	AnsBridge, AnsTask   int
	Touched, NotBack     int
	ReadBack             []float64
	Said                 string
}

type layersResult struct {
	Label    string
	Tasks    int
	Hold     time.Duration
	Rows     []layerRow
	Before   int // answers before the first drift (must be 0)
	Duration time.Duration
}

// idleProfile is the agent's CPU profile, idle with the tasks.
type idleProfile struct {
	Label     string
	Data      []byte
	For       time.Duration
	Path, Top string // set by writeReport
}

// uptime is CLOCK_BOOTTIME in seconds: the clock of /proc/uptime, which
// the probers read inside their containers.
func uptime() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// hostLayerDrift runs a host drift; a refused one returns what it said.
func (c *contender) hostLayerDrift(kind string) (said string, err error) {
	switch kind {
	case "docker-user-flushed", "restore-without-rule":
		return "", c.drift(kind)
	case "forward-flushed":
		_, err = c.sb.HostRun("iptables", "-w", "-F", "FORWARD")
	case "nft-flush-ruleset":
		_, err = c.sb.HostRun("nft", "flush", "ruleset")
	case "nft-delete-table":
		// Refused while imdsguard owns the table; no such table for the
		// others. Either way nothing is deleted, and the error is the
		// measurement.
		out, derr := c.sb.HostRun("nft", "delete", "table", "inet", "imdsguard")
		if derr == nil {
			return "", errors.New("nft delete table inet imdsguard succeeded")
		}
		return lastLine(out), nil
	default:
		err = fmt.Errorf("unknown drift %q", kind)
	}
	return "", err
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(l[0])
}

// syncReadBack is when the first sync the agent began after t read layer 1
// back: its start plus its stages up to and including `until` (the
// agent's own timestamps, from /status).
func syncReadBack(st *status.Status, t time.Time, until string) (time.Time, bool) {
	ls := st.LastSync
	if ls == nil || !ls.At.After(t) {
		return time.Time{}, false
	}
	var ms float64
	for _, k := range []string{"docker", "containers", "ecs", "routes", "firewall", "nftables", "awsvpc"} {
		ms += ls.StagesMS[k]
		if k == until {
			break
		}
	}
	return ls.At.Add(time.Duration(ms * float64(time.Millisecond))), true
}

func scenarioLayers(ctx context.Context, c *contender, cfg *config, res *results) error {
	c.logf("%s: scenario 7, %d awsvpc tasks", c.label(), cfg.tasks)
	// From no containers: the scale scenario's 500 would be in the idle
	// figures.
	if ids, err := c.sb.Docker("ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
		if _, err := c.sb.Docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...); err != nil {
			return err
		}
	}
	tasks, err := c.startTasks(ctx, cfg.tasks)
	if err != nil {
		return err
	}
	task := tasks[0]
	if c.status != nil {
		if err := c.waitTasks(ctx, cfg.tasks, 5*time.Minute); err != nil {
			return err
		}
		c.logf("%s: scenario 7, idle %v with both layers and %d tasks", c.label(), cfg.idleTasks, cfg.tasks)
		r, err := c.footprint(ctx, fmt.Sprintf("idle, %d awsvpc tasks", cfg.tasks), cfg.idleTasks, nil)
		if err != nil {
			return err
		}
		res.addFootprint(r)
		// Where that idle CPU goes, profiled after the window so the
		// profiler's own cost is not in the figure.
		d := min(cfg.idleTasks, 30*time.Second)
		prof, err := c.status.profile(d)
		if err != nil {
			res.fail(c.label()+": idle profile", err)
		} else {
			res.mu.Lock()
			res.idleProfiles = append(res.idleProfiles, idleProfile{Label: c.label(), Data: prof, For: d})
			res.mu.Unlock()
		}
	}
	// Commit times: the host's monitor, and one in the task.
	hmon := c.mon
	if hmon == nil {
		if hmon, err = newNFTMonitor(c.sb.HostNetNSPath); err != nil {
			return err
		}
		defer hmon.Close()
	}
	tmon, err := newNFTMonitor(task.NetNSPath)
	if err != nil {
		return err
	}
	defer tmon.Close()

	n := cfg.layerDrifts * len(layerKinds)
	maxDur := time.Duration(n)*(cfg.layerHold+3*time.Second) + 60*time.Second
	if err := c.startProberEvery(ctx, "l-prober", maxDur, 10); err != nil {
		return err
	}
	app := append([]string{"--network", "container:" + task.Pause, "--cap-add", "NET_ADMIN"}, taskLabels("task01", "app")...)
	if err := c.startProberEvery(ctx, "l-task-prober", maxDur, 10, app...); err != nil {
		return err
	}
	c.logf("%s: scenario 7, %d drifts (%d of each of %d kinds), each held %v", c.label(), n, cfg.layerDrifts, len(layerKinds), cfg.layerHold)
	t0 := time.Now()
	drifts, err := c.layerDrifts(ctx, task, n, cfg.layerHold, hmon, tmon)
	dur := time.Since(t0)
	pb, berr := c.stopProber("l-prober")
	pt, terr := c.stopProber("l-task-prober")
	if err := errors.Join(err, berr, terr); err != nil {
		return err
	}
	r := layersResult{Label: c.label(), Tasks: cfg.tasks, Hold: cfg.layerHold, Duration: dur}
	r.Rows, r.Before = attribute(drifts, pb, pt)
	res.mu.Lock()
	res.layers = append(res.layers, r)
	res.mu.Unlock()
	if c.kind != kindImdsguard || cfg.orphanRounds == 0 {
		return nil
	}
	c.logf("%s: scenario 7, %d restarts with the orphaned tables deleted", c.label(), cfg.orphanRounds)
	o, err := c.orphanRounds(ctx, task, cfg.orphanRounds, cfg.tasks)
	res.mu.Lock()
	res.orphans = append(res.orphans, o)
	res.mu.Unlock()
	return err
}

func (c *contender) layerDrifts(ctx context.Context, task *sandbox.Task, n int, hold time.Duration, hmon, tmon *nftMonitor) ([]layerDrift, error) {
	var out []layerDrift
	own := c.kind == kindImdsguard
	hostList := func() string {
		return layer1Listing(func(n string, a ...string) (string, error) { return c.sb.HostRun(n, a...) }, "inet", "bridge")
	}
	taskList := func() string { return layer1Listing(task.Run, "inet") }
	var hostL1, taskL1 string
	if own {
		hostL1, taskL1 = hostList(), taskList()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		d := layerDrift{kind: layerKinds[i%len(layerKinds)], readBack: -1}
		snap, err := c.save()
		if err != nil {
			return out, err
		}
		mon, until := hmon, "nftables"
		if isTaskKind(d.kind) {
			mon, until = tmon, "awsvpc"
		}
		mon.drain()
		d.start = uptime()
		began := time.Now()
		if isTaskKind(d.kind) {
			_, err = taskDrift(task, d.kind)
		} else {
			d.said, err = c.hostLayerDrift(d.kind)
		}
		if err != nil {
			return out, fmt.Errorf("%s drift %d (%s): %w", c.label(), i, d.kind, err)
		}
		// The drift's commit, if it made one (a refused delete and
		// iptables-legacy make none): the read-back is timed from it, else
		// from the command's end.
		from := time.Now()
		select {
		case t := <-mon.ch:
			if t.After(began) {
				from = t
			}
		case <-time.After(50 * time.Millisecond):
		}
		holdEnd := time.Now().Add(hold)
		for own && time.Now().Before(holdEnd) && d.readBack < 0 {
			if st, err := c.status.get(); err == nil {
				if at, ok := syncReadBack(st, from, until); ok {
					d.readBack = ms(at.Sub(from))
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Until(holdEnd))
		if own {
			list, was := hostList(), &hostL1
			if isTaskKind(d.kind) {
				list, was = taskList(), &taskL1
			}
			if list != *was {
				d.touched = true
				*was = list
			}
		}
		// Put back what was there, and wait for the block before the next.
		if isTaskKind(d.kind) {
			if err := undoTaskDrift(task); err != nil {
				return out, err
			}
			if own && !c.taskRoutesBack(ctx, task.Pause, 10*time.Second) {
				d.notBack = true
			}
		} else {
			if err := c.restore(snap); err != nil {
				return out, err
			}
			if err := c.ensureBlocked(ctx, snap, 10*time.Second); err != nil {
				return out, err
			}
		}
		d.end = uptime()
		out = append(out, d)
		c.settle(ctx, 100*time.Millisecond, 200*time.Millisecond)
	}
	return out, ctx.Err()
}

// attribute counts, per drift kind, the probes each prober sent between
// the drift and the block back, and the answers that came back between
// the drift and the next one (answers before the first drift are returned
// apart).
func attribute(ds []layerDrift, bridge, task probeLog) ([]layerRow, int) {
	rows := make([]layerRow, len(layerKinds))
	for i, k := range layerKinds {
		rows[i].Kind = k
	}
	idx := func(k string) int {
		for i, r := range rows {
			if r.Kind == k {
				return i
			}
		}
		return 0
	}
	before := 0
	count := func(answers []float64, add func(int, int)) {
		for _, u := range answers {
			j := -1
			for i, d := range ds {
				if u >= d.start {
					j = i
				}
			}
			if j < 0 {
				before++
				continue
			}
			add(idx(ds[j].kind), 1)
		}
	}
	count(bridge.answers, func(i, n int) { rows[i].AnsBridge += n })
	count(task.answers, func(i, n int) { rows[i].AnsTask += n })
	sent := make([][2]float64, len(rows))
	for _, d := range ds {
		r := &rows[idx(d.kind)]
		r.Drifts++
		if d.touched {
			r.Touched++
		}
		if d.notBack {
			r.NotBack++
		}
		if d.readBack >= 0 {
			r.ReadBack = append(r.ReadBack, d.readBack)
		}
		if d.said != "" && r.Said == "" {
			r.Said = d.said
		}
		s := &sent[idx(d.kind)]
		s[0] += bridge.sentBy(d.end) - bridge.sentBy(d.start)
		s[1] += task.sentBy(d.end) - task.sentBy(d.start)
	}
	for i := range rows {
		rows[i].SentBridge, rows[i].SentTask = int(sent[i][0]+0.5), int(sent[i][1]+0.5)
	}
	return rows, before
}
