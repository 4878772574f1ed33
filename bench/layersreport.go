package main

import (
	"fmt"
	"strings"
	"time"
)

// Scenario 7 in the results file and its targets.

func layerTotals(l layersResult) (answered, touched, drifts int) {
	for _, r := range l.Rows {
		answered += r.AnsBridge + r.AnsTask
		touched += r.Touched
		drifts += r.Drifts
	}
	return answered + l.Before, touched, drifts
}

func layerTargets(res *results) []target {
	var ts []target
	touched, reads := 0, 0
	var imdsguard bool
	for _, l := range sortByLabel(res.layers, func(l layersResult) string { return l.Label }) {
		if !strings.HasPrefix(l.Label, kindImdsguard) {
			continue
		}
		imdsguard = true
		a, t, n := layerTotals(l)
		ts = append(ts, target{fmt.Sprintf("answered probes, every drift kind, %s (%d drifts)", l.Label, n), "0",
			fmt.Sprint(a), a == 0, true})
		touched += t
		reads += n
	}
	if imdsguard {
		ts = append(ts, target{"layer-1 repair p99, agent running", "< 5 ms",
			fmt.Sprintf("nothing to repair: %d of %d listings after a drift were unchanged (the owner flag refuses every other writer)", reads-touched, reads),
			touched == 0, touched > 0})
	}
	for _, o := range sortByLabel(res.orphans, func(o orphanResult) string { return o.Label }) {
		h, t := summarize(o.Host), summarize(o.Task)
		ok := o.Failed == 0 && h.n > 0 && h.p99 < 5 && t.p99 < 5
		ts = append(ts, target{"layer-1 repair p99, orphan deleted while stopped, " + o.Label + " (from the next agent's exec)", "< 5 ms",
			fmt.Sprintf("host %s, task %s (%d rounds, %d failed)", fmtMS(h.p99), fmtMS(t.p99), o.Rounds, o.Failed), ok, true})
	}
	return ts
}

func layersSection(p func(string, ...any), res *results) {
	ls := sortByLabel(res.layers, func(l layersResult) string { return l.Label })
	p("## 7. Both layers: exposure by drift kind")
	p("")
	p("Two probers as in 2 (every 10 ms), one on the default bridge and one in an awsvpc task (`--network container:` its pause container, `--cap-add NET_ADMIN`), while %d awsvpc task namespaces run (each with the blackhole ECS adds; imdsguard runs `--awsvpc-mode enforce`). Each drift is held %v, then the harness puts back what was there (the filter snapshot on the host; ECS's blackhole and no rule of the task's own in the task) and waits for the block; answers count for a drift from its start to the next drift. Probes sent count from the drift to the block verified back.", ls[0].Tasks, ls[0].Hold)
	p("")
	p("| Contender | drift | n | probes sent, bridge / task | answered, bridge / task | layer 1 listed differently after | drift said |")
	p("|---|---|---|---|---|---|---|")
	for _, l := range ls {
		for _, r := range l.Rows {
			ch := "—"
			if strings.HasPrefix(l.Label, kindImdsguard) {
				ch = fmt.Sprintf("%d of %d", r.Touched, r.Drifts)
			}
			ans := fmt.Sprintf("%d / %d", r.AnsBridge, r.AnsTask)
			if r.AnsBridge+r.AnsTask > 0 {
				ans = "**" + ans + "**"
			}
			p("| %s | %s | %d | %d / %d | %s | %s | %s |", l.Label, r.Kind, r.Drifts, r.SentBridge, r.SentTask, ans, ch, orDash(r.Said))
		}
		a, _, n := layerTotals(l)
		p("| **%s** | **all** | %d | | **%d** (%d before the first drift) | | took %v |", l.Label, n, a, l.Before, l.Duration.Round(time.Second))
	}
	p("")
	p("### Layer 1 read back after each drift (imdsguard)")
	p("")
	p("From the drift's commit (the nf_tables notification in the namespace it was made in; the command's end when it committed nothing: a refused `nft delete table`, iptables-legacy, a route change) to the end of the `nftables` stage (host) or `awsvpc` stage (task) of the first sync the agent began after it, by the agent's own `last_sync` timestamps (polled every 5 ms, so a second sync in between makes it an over-estimate). Nothing needed rebuilding: this is how soon the agent looked again, not a repair. Read-backs not within the %v hold came at a later resync.", ls[0].Hold)
	p("")
	p("| Contender | drift | read back within the hold | median | p95 | p99 | max | task routes not back within 10 s |")
	p("|---|---|---|---|---|---|---|---|")
	for _, l := range ls {
		if !strings.HasPrefix(l.Label, kindImdsguard) {
			continue
		}
		for _, r := range l.Rows {
			st := summarize(r.ReadBack)
			if st.n == 0 {
				p("| %s | %s | 0 of %d | — | — | — | — | %d |", l.Label, r.Kind, r.Drifts, r.NotBack)
				continue
			}
			p("| %s | %s | %d of %d | %s | %s | %s | %s | %d |", l.Label, r.Kind, st.n, r.Drifts, fmtMS(st.med), fmtMS(st.p95), fmtMS(st.p99), fmtMS(st.max), r.NotBack)
		}
	}
	p("")
	if len(res.orphans) > 0 {
		orphanSection(p, res)
	}
	for _, ip := range res.idleProfiles {
		p("### Idle with %d tasks: %s's CPU profile", ls[0].Tasks, ip.Label)
		p("")
		profileBlock(p, fmt.Sprintf("Taken over %v right after the idle window", ip.For), ip.Path, ip.Top)
		p("")
	}
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return "`" + strings.ReplaceAll(s, "|", "/") + "`"
}

func orphanSection(p func(string, ...any), res *results) {
	p("### Layer 1 touched: deleted while no agent owns it")
	p("")
	p("The only writer layer 1 lets in besides its owner is anyone at all once the owner is gone: each round SIGTERMs imdsguard (the tables stay, orphaned, with persist), deletes `inet` and `bridge imdsguard` on the host and `inet imdsguard` in a task as a non-owner, and starts imdsguard again. Timed from the new agent's exec to the end of the `nftables` (host) or `awsvpc` (task) stage of the first sync that reported the table whole and owned (the agent's own `last_sync` timestamps). The deletion came while nothing ran, so this is the next agent's start-up, not a reaction; layer 2 blocked meanwhile.")
	p("")
	p("| Agent | rounds | deletions said | host: median | p99 | max | task: median | p99 | max | failed |")
	p("|---|---|---|---|---|---|---|---|---|---|")
	for _, o := range sortByLabel(res.orphans, func(o orphanResult) string { return o.Label }) {
		h, t := summarize(o.Host), summarize(o.Task)
		said := "deleted"
		if o.Said != "" {
			said = orDash(o.Said)
		}
		p("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %d |", o.Label, o.Rounds, said, fmtMS(h.med), fmtMS(h.p99), fmtMS(h.max), fmtMS(t.med), fmtMS(t.p99), fmtMS(t.max), o.Failed)
	}
	p("")
}
