package main

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Percentiles and grouping of samples, for the report and the chart.

type stats struct {
	n                            int
	min, med, p95, p99, max, avg float64
}

// summarize uses nearest-rank percentiles: with n samples, p99 is the
// ceil(0.99 n)-th smallest, so for n < 100 it is the maximum.
func summarize(v []float64) stats {
	if len(v) == 0 {
		return stats{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	return stats{n: len(s), min: s[0], med: rank(0.5), p95: rank(0.95), p99: rank(0.99), max: s[len(s)-1], avg: sum / float64(len(s))}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtMS(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.1f s", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

type group struct {
	label    string
	samples  []sample
	repaired []float64
	window   time.Duration
}

func (g group) notRepaired() int { return len(g.samples) - len(g.repaired) }

// groups splits samples of one scenario by contender (and optionally kind),
// in a fixed contender order.
func groups(all []sample, scenario string, byKind bool) []group {
	order := map[string]int{"imdsguard (nft)": 0, "imdsguard (legacy)": 1, "poll (nft)": 2, "static (nft)": 3}
	idx := map[string]int{}
	var gs []group
	for _, s := range all {
		if s.Scenario != scenario {
			continue
		}
		l := fmt.Sprintf("%s (%s)", s.Contender, s.Backend)
		if byKind {
			l += "\x00" + s.Kind
		}
		i, ok := idx[l]
		if !ok {
			i = len(gs)
			idx[l] = i
			gs = append(gs, group{label: l})
		}
		g := &gs[i]
		g.samples = append(g.samples, s)
		g.window = max(g.window, s.Window)
		if s.Repaired {
			g.repaired = append(g.repaired, ms(s.Latency))
		}
	}
	kindIdx := func(l string) int {
		_, k, _ := strings.Cut(l, "\x00")
		return slices.Index(driftKinds, k)
	}
	slices.SortStableFunc(gs, func(a, b group) int {
		ca, _, _ := strings.Cut(a.label, "\x00")
		cb, _, _ := strings.Cut(b.label, "\x00")
		if c := cmp.Compare(order[ca], order[cb]); c != 0 {
			return c
		}
		return cmp.Compare(kindIdx(a.label), kindIdx(b.label))
	})
	return gs
}

func latencyRow(name string, g group) string {
	st := summarize(g.repaired)
	nr := "0"
	if n := g.notRepaired(); n > 0 {
		nr = fmt.Sprintf("**%d** (not within %v)", n, g.window)
	}
	if st.n == 0 {
		return fmt.Sprintf("| %s | %d | — | — | — | — | — | %s |", name, len(g.samples), nr)
	}
	return fmt.Sprintf("| %s | %d | %s | %s | %s | %s | %s | %s |", name, len(g.samples),
		fmtMS(st.min), fmtMS(st.med), fmtMS(st.p95), fmtMS(st.p99), fmtMS(st.max), nr)
}

func sortByLabel[T any](v []T, label func(T) string) []T {
	order := map[string]int{"imdsguard (nft)": 0, "imdsguard (legacy)": 1, "poll (nft)": 2, "static (nft)": 3}
	s := slices.Clone(v)
	slices.SortStableFunc(s, func(a, b T) int { return cmp.Compare(order[label(a)], order[label(b)]) })
	return s
}
