package main

import (
	"cmp"
	"encoding/csv"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

func writeReport(res *results, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	base := res.started.UTC().Format("2006-01-02")
	if res.cfg.quick {
		base += "-quick"
	}
	if res.cfg.scenarios != nil {
		base += "-" + strings.Join(slices.Sorted(maps.Keys(res.cfg.scenarios)), "+")
	}
	mdPath := filepath.Join(dir, base+".md")
	pngPath := filepath.Join(dir, base+".png")
	csvPath := filepath.Join(dir, base+".csv")
	files := []string{mdPath, pngPath, csvPath}
	if s := res.scale; s != nil && len(s.Profile) > 0 {
		s.ProfilePath = filepath.Join(dir, base+"-scale-cpu.pprof")
		if err := os.WriteFile(s.ProfilePath, s.Profile, 0o644); err != nil {
			return nil, err
		}
		s.ProfileTop = pprofTop(s.ProfilePath)
		files = append(files, s.ProfilePath)
	}
	for i := range res.idleProfiles {
		ip := &res.idleProfiles[i]
		ip.Path = filepath.Join(dir, base+"-idle-"+strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(ip.Label)+"-cpu.pprof")
		if err := os.WriteFile(ip.Path, ip.Data, 0o644); err != nil {
			return nil, err
		}
		ip.Top = pprofTop(ip.Path)
		files = append(files, ip.Path)
	}
	if len(groups(res.samples, "repair", false)) > 0 {
		if err := writeChart(res, pngPath); err != nil {
			return nil, fmt.Errorf("chart: %w", err)
		}
	} else {
		files = slices.DeleteFunc(files, func(f string) bool { return f == pngPath })
	}
	if err := writeCSV(res, csvPath); err != nil {
		return nil, err
	}
	if err := os.WriteFile(mdPath, []byte(markdown(res, filepath.Base(pngPath), filepath.Base(csvPath))), 0o644); err != nil {
		return nil, err
	}
	return files, nil
}

// pprofTop is `go tool pprof -top -cum` of a profile (where the time goes,
// caller by caller), or why there is none.
func pprofTop(path string) string {
	gobin := cmp.Or(os.Getenv("GO"), "go")
	out, err := exec.Command(gobin, "tool", "pprof", "-top", "-cum", "-nodecount=25", path).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func writeCSV(res *results, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := csv.NewWriter(f)
	_ = w.Write([]string{"scenario", "contender", "backend", "drift", "repaired", "latency_ms", "window_s"})
	all := slices.Clone(res.samples)
	if res.scale != nil {
		all = append(all, res.scale.Repair...)
	}
	for _, s := range all {
		_ = w.Write([]string{s.Scenario, s.Contender, s.Backend, s.Kind, strconv.FormatBool(s.Repaired),
			strconv.FormatFloat(ms(s.Latency), 'f', 3, 64), strconv.FormatFloat(s.Window.Seconds(), 'f', 0, 64)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return err
	}
	return f.Close()
}

type target struct {
	what, goal, got string
	met             bool
	known           bool
}

func evalTargets(res *results) []target {
	var ts []target
	var nft, legacy group
	for _, g := range groups(res.samples, "repair", false) {
		switch g.label {
		case "imdsguard (nft)":
			nft = g
		case "imdsguard (legacy)":
			legacy = g
		}
	}
	if len(nft.samples) > 0 {
		st := summarize(nft.repaired)
		ok := nft.notRepaired() == 0
		ts = append(ts,
			target{"repair p50, iptables-nft", "< 20 ms", fmtMS(st.med), ok && st.med < 20, true},
			target{"repair p99, iptables-nft", "< 100 ms", fmtMS(st.p99), ok && st.p99 < 100, true})
	}
	if len(legacy.samples) > 0 {
		st := summarize(legacy.repaired)
		lim := ms(res.cfg.resync) + 50
		ts = append(ts, target{"repair max, iptables-legacy", fmt.Sprintf("≤ resync interval + 50 ms (%s)", fmtMS(lim)), fmtMS(st.max), legacy.notRepaired() == 0 && st.max <= lim, true})
	}
	for _, r := range res.restarts {
		if len(r.Resync) == 0 {
			continue
		}
		var v []float64
		for _, d := range r.Resync {
			v = append(v, ms(d))
		}
		st := summarize(v)
		ts = append(ts, target{"dockerd restart → resynced, " + r.Label, "< 1 s", "max " + fmtMS(st.max), st.max < 1000, true})
	}
	for _, f := range res.footprint {
		switch {
		case strings.HasPrefix(f.Phase, "idle"):
			what := f.Label + strings.TrimPrefix(f.Phase, "idle")
			ts = append(ts, target{"idle CPU, " + what, "< 0.5 % of one core", fmt.Sprintf("%.3f %% (agent alone %.3f %%)", f.CPUAll, f.CPUOwn), f.CPUAll < 0.5, true})
			ts = append(ts, target{"RSS idle, " + what, "< 30 MiB", fmt.Sprintf("max %.1f MiB", f.RSSMax), f.RSSMax < 30, true})
		case f.Phase == "churn":
			ts = append(ts, target{"RSS under churn, " + f.Label, "< 30 MiB", fmt.Sprintf("max %.1f MiB", f.RSSMax), f.RSSMax < 30, true})
		}
	}
	if s := res.scale; s != nil {
		st := summarize(s.SyncMS)
		ts = append(ts, target{fmt.Sprintf("sync with %d containers, %d exempt (agent-reported)", s.Containers, s.Exempt), "< 200 ms", fmt.Sprintf("median %s, max %s", fmtMS(st.med), fmtMS(st.max)), st.n > 0 && st.max < 200, true})
	}
	return append(ts, layerTargets(res)...)
}

func markdown(res *results, png, csvName string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	mode := "full"
	if res.cfg.quick {
		mode = "quick (`make bench-quick`: small counts, not for claims)"
	}
	if res.cfg.scenarios != nil {
		mode += ", scenarios " + strings.Join(slices.Sorted(maps.Keys(res.cfg.scenarios)), ", ") + " only"
	}
	p("# imdsguard benchmark, %s", res.started.UTC().Format("2006-01-02 15:04 MST"))
	p("")
	p("Mode: %s. Wall time: %v. Method and targets: [bench/README.md](../README.md). Raw samples: [%s](%s).", mode, res.took.Round(time.Second), csvName, csvName)
	p("")
	p("| Machine | |")
	p("|---|---|")
	for _, kv := range res.machine {
		p("| %s | %s |", kv[0], strings.ReplaceAll(kv[1], "|", "/"))
	}
	p("")
	if len(res.errors) > 0 {
		p("**Errors during the run** (the figures they affect are missing or partial):")
		p("")
		for _, e := range res.errors {
			p("- `%s`", strings.ReplaceAll(strings.SplitN(e, "\n", 2)[0], "`", "'"))
		}
		p("")
	}
	p("## Targets")
	p("")
	p("| Target | Goal | Measured | |")
	p("|---|---|---|---|")
	for _, t := range evalTargets(res) {
		v := "met"
		switch {
		case !t.known:
			v = "n/a"
		case !t.met:
			v = "**missed**"
		}
		p("| %s | %s | %s | %s |", t.what, t.goal, t.got, v)
	}
	p("")
	if len(groups(res.samples, "repair", false)) > 0 {
		repairSection(p, res, png)
	}
	if len(res.exposure) > 0 {
		exposureSection(p, res)
	}
	if len(res.restarts) > 0 {
		restartSection(p, res)
	}
	if len(res.footprint) > 0 {
		footprintSection(p, res)
	}
	if res.scale != nil {
		scaleSection(p, res.scale)
	}
	if len(res.layers) > 0 {
		layersSection(p, res)
	}
	if len(res.micro) > 0 {
		microSection(p, res)
	}
	return b.String()
}

func repairSection(p func(string, ...any), res *results, png string) {
	p("## 1. Drift repair latency")
	p("")
	p("Time from the drift's commit to the block verified back in the kernel's ruleset. Not repaired: drifts still open when the window closed (the harness then restored the ruleset itself).")
	p("")
	p("![repair latency](%s)", png)
	p("")
	p("| Contender | drifts | min | median | p95 | p99 | max | not repaired |")
	p("|---|---|---|---|---|---|---|---|")
	for _, g := range groups(res.samples, "repair", false) {
		p("%s", latencyRow("**"+g.label+"**", g))
	}
	p("")
	p("By drift kind:")
	p("")
	p("| Contender | drift | n | min | median | p95 | p99 | max | not repaired |")
	p("|---|---|---|---|---|---|---|---|---|")
	for _, g := range groups(res.samples, "repair", true) {
		c, k, _ := strings.Cut(g.label, "\x00")
		p("%s", latencyRow(c+" | "+k, g))
	}
	p("")
}

func exposureSection(p func(string, ...any), res *results) {
	p("## 2. Exposure")
	p("")
	p("A container sends an HTTP GET for instance-id to 169.254.169.254 every 10 ms (background busybox `nc -w 1`, so a dropped probe does not delay the next); a probe counts as answered when the instance ID came back. Each drift's window closes when the block is verified back or after %v, when the harness restores the ruleset itself.", res.cfg.expWindow)
	p("")
	p("| Contender | drifts | probes sent | answered | answered per drift | ≈ open time per drift | probe spacing |")
	p("|---|---|---|---|---|---|---|")
	for _, e := range sortByLabel(res.exposure, func(e exposureResult) string { return e.Label }) {
		per := float64(e.Answered) / float64(max(e.Drifts, 1))
		p("| %s | %d | %d | %d | %.1f | %s | %s |", e.Label, e.Drifts, e.Issued, e.Answered, per,
			fmtMS(per*ms(e.Spacing)), e.Spacing.Round(100*time.Microsecond))
	}
	p("")
}

func restartSection(p func(string, ...any), res *results) {
	p("## 3. dockerd restart")
	p("")
	p("dockerd is stopped (its containers with it) and started again. Resynced: the first `/status` (polled every 5 ms) after dockerd answers `/_ping` (polled every 5 ms) that shows Docker reachable, a sync begun after the stop, and IPv4 enforced. A prober container with `--restart always` probes IMDS every 10 ms whenever it runs; the ruleset is also read every 20 ms throughout.")
	p("")
	p("| Contender | restarts | resync after dockerd answers (each) | probes sent | answered | ruleset reads without the block |")
	p("|---|---|---|---|---|---|")
	for _, r := range sortByLabel(res.restarts, func(r restartResult) string { return r.Label }) {
		var ds []string
		for _, d := range r.Resync {
			ds = append(ds, fmtMS(ms(d)))
		}
		rs := "n/a"
		if len(ds) > 0 {
			rs = strings.Join(ds, ", ")
		}
		p("| %s | %d | %s | %d | %d | %d of %d |", r.Label, r.Restarts, rs, r.Issued, r.Answered, r.Unblocked, r.Checks)
	}
	p("")
}

func footprintSection(p func(string, ...any), res *results) {
	p("## 4. Footprint")
	p("")
	p("CPU from /proc/PID/stat (utime+stime; \"with children\" adds the iptables-save/-restore processes the agent waits for), as %% of one core over the phase. RSS = VmRSS sampled every second.")
	p("")
	p("| Agent | phase | duration | CPU, agent | CPU, with children | RSS median | RSS max | load |")
	p("|---|---|---|---|---|---|---|---|")
	for _, f := range res.footprint {
		p("| %s | %s | %v | %.3f %% | %.3f %% | %.1f MiB | %.1f MiB | %s |", f.Label, f.Phase, f.Duration.Round(time.Second), f.CPUOwn, f.CPUAll, f.RSSMed, f.RSSMax, cmp.Or(f.Note, "none"))
	}
	p("")
}

func scaleSection(p func(string, ...any), s *scaleResult) {
	p("## 5. Scale")
	p("")
	{
		var rep []float64
		nr := 0
		for _, x := range s.Repair {
			if x.Repaired {
				rep = append(rep, ms(x.Latency))
			} else {
				nr++
			}
		}
		p("%s with %d running containers, %d of them exempt (started in %v).", s.Label, s.Containers, s.Exempt, s.StartTook.Round(time.Second))
		p("")
		p("| Measure | n | min | median | p95 | max |")
		p("|---|---|---|---|---|---|")
		row := func(what string, v []float64) {
			if st := summarize(v); st.n > 0 {
				p("| %s | %d | %s | %s | %s | %s |", what, st.n, fmtMS(st.min), fmtMS(st.med), fmtMS(st.p95), fmtMS(st.max))
			}
		}
		row("sync duration (agent's `last_sync.duration_ms`)", s.SyncMS)
		for _, k := range slices.Sorted(maps.Keys(s.StagesMS)) {
			row(fmt.Sprintf("… of which `%s`", k), s.StagesMS[k])
		}
		row("dockerd listing the containers (agent's `docker.list_duration_ms`, in the lister, not in a sync)", s.ListMS)
		row("repair latency, measured from outside", rep)
		if nr > 0 {
			p("")
			p("%d drifts not repaired within 10 s.", nr)
		}
		if s.ProfilePath != "" {
			p("")
			profileBlock(p, fmt.Sprintf("The agent's CPU profile over %v of it", s.ProfileFor), s.ProfilePath, s.ProfileTop)
		}
	}
	p("")
}

// profileBlock is a profile's link and its `go tool pprof -top -cum`.
func profileBlock(p func(string, ...any), what, path, top string) {
	p("%s ([%s](%s), `go tool pprof -top -cum`):", what, filepath.Base(path), filepath.Base(path))
	p("")
	p("```")
	p("%s", top)
	p("```")
}

func microSection(p func(string, ...any), res *results) {
	p("## 6. Micro-benchmarks")
	p("")
	p("`go test -run '^$' -bench . -benchmem ./ecsconfig/ ./firewall/ ./bench/`")
	p("")
	p("| Benchmark | ns/op | B/op | allocs/op |")
	p("|---|---|---|---|")
	for _, m := range res.micro {
		p("| %s | %.0f | %.0f | %.0f |", m.Name, m.NsOp, m.BytesOp, m.Allocs)
	}
	p("")
}
