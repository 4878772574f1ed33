// Command bench measures imdsguard against the alternatives people use, in
// the simulated ECS container instance of e2e/sandbox, from outside the
// agent. See bench/README.md for the method; `make bench` / `make
// bench-quick` run it and write bench/results/.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
)

type config struct {
	quick             bool
	nftPerKind        int
	legacyPerKind     int
	staticN, pollN    int
	staticWindow      time.Duration
	expDrifts         int
	expDriftsBaseline int // static and poll
	expDriftsLegacy   int // each costs up to one resync interval
	expWindow         time.Duration
	restarts          int
	idle, idleLegacy  time.Duration
	churn             time.Duration
	scale, scaleDrift int
	resync            time.Duration
	// Scenario 7: awsvpc tasks, drifts per kind, how long each is held.
	tasks, layerDrifts, orphanRounds int
	layerHold, idleTasks             time.Duration
	// scenarios to run; nil: all.
	scenarios map[string]bool
}

// scenarioNames are what -scenarios takes.
var scenarioNames = []string{"repair", "exposure", "restart", "footprint", "scale", "layers"}

func (c *config) want(s string) bool { return c.scenarios == nil || c.scenarios[s] }

func fullConfig() *config {
	return &config{
		nftPerKind: 200, legacyPerKind: 15, staticN: 5, pollN: 5, staticWindow: 30 * time.Second,
		expDrifts: 50, expDriftsBaseline: 10, expDriftsLegacy: 50, expWindow: 6 * time.Second,
		restarts: 5, idle: 10 * time.Minute, idleLegacy: 3 * time.Minute, churn: 2 * time.Minute,
		scale: 500, scaleDrift: 20, resync: 5 * time.Second,
		tasks: 50, layerDrifts: 50, orphanRounds: 10, layerHold: 500 * time.Millisecond, idleTasks: 3 * time.Minute,
	}
}

func quickConfig() *config {
	return &config{
		quick:      true,
		nftPerKind: 15, legacyPerKind: 2, staticN: 2, pollN: 1, staticWindow: 5 * time.Second,
		expDrifts: 10, expDriftsBaseline: 3, expDriftsLegacy: 4, expWindow: 6 * time.Second,
		restarts: 1, idle: 20 * time.Second, idleLegacy: 20 * time.Second, churn: 10 * time.Second,
		scale: 30, scaleDrift: 5, resync: 5 * time.Second,
		tasks: 5, layerDrifts: 2, orphanRounds: 1, layerHold: 500 * time.Millisecond, idleTasks: 15 * time.Second,
	}
}

type results struct {
	mu           sync.Mutex
	cfg          *config
	started      time.Time
	took         time.Duration
	samples      []sample
	exposure     []exposureResult
	layers       []layersResult
	orphans      []orphanResult
	idleProfiles []idleProfile
	restarts     []restartResult
	footprint    []footprintResult
	scale        *scaleResult
	micro        []microResult
	errors       []string
	machine      [][2]string
	logDir       string
}

func (r *results) add(s sample) {
	r.mu.Lock()
	r.samples = append(r.samples, s)
	r.mu.Unlock()
}

func (r *results) addFootprint(f footprintResult) {
	r.mu.Lock()
	r.footprint = append(r.footprint, f)
	r.mu.Unlock()
}

func (r *results) fail(what string, err error) {
	r.mu.Lock()
	r.errors = append(r.errors, fmt.Sprintf("%s: %v", what, err))
	r.mu.Unlock()
}

func main() {
	quick := flag.Bool("quick", false, "short run (under 5 minutes)")
	out := flag.String("out", "bench/results", "directory for <date>.md, .png, .csv")
	bin := flag.String("bin", "bin/imdsguard", "agent binary")
	noMicro := flag.Bool("no-micro", false, "skip the go test -bench micro-benchmarks")
	only := flag.String("only", "", "comma-separated contenders to run (imdsguard-nft,imdsguard-legacy,static,poll); empty: all")
	tasks := flag.Int("tasks", 0, "awsvpc tasks in scenario 7 (0: 50, 5 with -quick)")
	scen := flag.String("scenarios", "", "comma-separated scenarios to run ("+strings.Join(scenarioNames, ",")+"); empty: all")
	flag.Parse()

	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (network namespaces, dockerd)")
		os.Exit(2)
	}
	binPath, err := filepath.Abs(*bin)
	if err == nil {
		_, err = os.Stat(binPath)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: agent binary: %v (run make build)\n", err)
		os.Exit(2)
	}
	cfg := fullConfig()
	if *quick {
		cfg = quickConfig()
	}
	if *tasks > 0 {
		cfg.tasks = *tasks
	}
	if *scen != "" {
		cfg.scenarios = map[string]bool{}
		for _, s := range strings.Split(*scen, ",") {
			if !slices.Contains(scenarioNames, s) {
				fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (%s)\n", s, strings.Join(scenarioNames, ","))
				os.Exit(2)
			}
			cfg.scenarios[s] = true
		}
	}
	want := func(name string) bool { return *only == "" || strings.Contains(","+*only+",", ","+name+",") }

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	res := &results{cfg: cfg, started: time.Now(), logDir: filepath.Join(*out, "logs")}
	res.machine = describeMachine()
	if !*noMicro {
		logf("micro-benchmarks")
		m, err := runMicro(ctx)
		if err != nil {
			res.fail("micro-benchmarks", err)
		}
		res.micro = m
	}

	// imdsguard on nft runs alone: it is the millisecond-scale measurement.
	if want("imdsguard-nft") {
		runContender(ctx, kindImdsguard, sandbox.BackendNFT, binPath, cfg, res, logf)
	}
	var rest []func()
	if want("imdsguard-legacy") {
		rest = append(rest, func() { runContender(ctx, kindImdsguard, sandbox.BackendLegacy, binPath, cfg, res, logf) })
	}
	if want("static") {
		rest = append(rest, func() { runContender(ctx, kindStatic, sandbox.BackendNFT, binPath, cfg, res, logf) })
	}
	if want("poll") {
		rest = append(rest, func() { runContender(ctx, kindPoll, sandbox.BackendNFT, binPath, cfg, res, logf) })
	}
	// Second-scale measurements: they can share the machine with each
	// other, not with imdsguard on nft.
	var wg sync.WaitGroup
	for _, f := range rest {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	wg.Wait()
	res.took = time.Since(res.started)
	if ctx.Err() != nil {
		logf("interrupted; sandboxes closed, nothing written")
		os.Exit(1)
	}
	files, err := writeReport(res, *out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: writing results: %v\n", err)
		os.Exit(1)
	}
	for _, f := range files {
		logf("wrote %s", f)
	}
	if len(res.errors) > 0 {
		for _, e := range res.errors {
			logf("error: %s", e)
		}
		os.Exit(1)
	}
}

// runContender builds one sandbox and runs every scenario that applies; a
// failing scenario is recorded and the next one still runs.
func runContender(ctx context.Context, kind string, backend sandbox.Backend, bin string, cfg *config, res *results, logf func(string, ...any)) {
	c, err := newContender(ctx, kind, backend, bin, cfg.resync, logf)
	if err != nil {
		res.fail(fmt.Sprintf("%s (%s): setup", kind, backend), err)
		return
	}
	c.logDir = res.logDir
	defer c.Close()
	step := func(name string, f func() error) {
		if ctx.Err() != nil || !cfg.want(strings.Fields(name)[0]) {
			return
		}
		if err := f(); err != nil {
			res.fail(c.label()+": "+name, err)
			if c.agent != nil {
				logf("%s agent log tail:\n%s", c.label(), tailLines(c.agent.Log(), 20))
			}
		}
	}
	step("repair", func() error { return scenarioRepair(ctx, c, cfg, res) })
	step("exposure", func() error { return scenarioExposure(ctx, c, cfg, res) })
	step("restart", func() error { return scenarioRestart(ctx, c, cfg, res) })
	if kind == kindImdsguard {
		idle, churn := cfg.idle, cfg.churn
		if backend == sandbox.BackendLegacy {
			idle = cfg.idleLegacy
			churn = 0
		}
		step("footprint", func() error { return scenarioFootprint(ctx, c, idle, churn, res) })
		if backend == sandbox.BackendNFT {
			step("scale", func() error { return scenarioScale(ctx, c, cfg.scale, cfg.scaleDrift, res) })
		}
	}
	// Last: it starts by removing what the others left running.
	step("layers (scenario 7)", func() error { return scenarioLayers(ctx, c, cfg, res) })
	if n := c.mon; n != nil && n.Lost() > 0 {
		res.fail(c.label(), fmt.Errorf("%d nf_tables notifications lost: latencies may be off", n.Lost()))
	}
}

// --- micro-benchmarks ---

type microResult struct {
	Name                  string
	NsOp, BytesOp, Allocs float64
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op(?:\s+([\d.]+) B/op\s+([\d.]+) allocs/op)?`)

func runMicro(ctx context.Context) ([]microResult, error) {
	gobin := os.Getenv("GO")
	if gobin == "" {
		gobin = "go"
	}
	cmd := exec.CommandContext(ctx, gobin, "test", "-run", "^$", "-bench", ".", "-benchmem", "-count", "1",
		"./ecsconfig/", "./firewall/", "./bench/")
	out, err := cmd.CombinedOutput()
	var res []microResult
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		r := microResult{Name: m[1]}
		r.NsOp, _ = strconv.ParseFloat(m[2], 64)
		r.BytesOp, _ = strconv.ParseFloat(m[3], 64)
		r.Allocs, _ = strconv.ParseFloat(m[4], 64)
		res = append(res, r)
	}
	if err != nil {
		return res, fmt.Errorf("%w\n%s", err, tailLines(string(out), 20))
	}
	return res, nil
}

// --- machine ---

func describeMachine() [][2]string {
	var d [][2]string
	add := func(k, v string) { d = append(d, [2]string{k, strings.TrimSpace(v)}) }
	sh := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimLeft(v, "\t :")
				break
			}
		}
	}
	add("CPU", fmt.Sprintf("%s, %s online CPUs", cpu, sh("nproc")))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		add("Memory", strings.TrimSpace(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:")))
	}
	osName := "unknown"
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				osName = strings.Trim(v, `"`)
			}
		}
	}
	add("OS", osName)
	add("Kernel", sh("uname", "-r"))
	add("Go", sh("go", "version"))
	add("dockerd", sh("dockerd", "--version"))
	add("iptables", sh("iptables", "--version")+"; "+sh("iptables-legacy", "--version"))
	add("imdsguard", sh("git", "describe", "--always", "--dirty"))
	if b, err := os.ReadFile("/sys/class/dmi/id/product_name"); err == nil {
		add("Platform", string(b))
	}
	return d
}
