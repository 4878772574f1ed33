package main

import (
	"math"
	"testing"
)

func TestProbeTimeline(t *testing.T) {
	p := parseProbeLog("S 100.00\nI 10 100.10\nA 100.15\nI 20 100.20\nA 100.35\nI 30 100.40\nDONE 30\n")
	if p.issued != 30 || p.answered != 2 || len(p.answers) != 2 {
		t.Fatalf("parsed %+v", p)
	}
	for _, c := range []struct{ u, want float64 }{{99, 0}, {100.05, 5}, {100.15, 15}, {100.40, 30}, {101, 30}} {
		if got := p.sentBy(c.u); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("sentBy(%v) = %v, want %v", c.u, got, c.want)
		}
	}
	// A restarted prober counts from 0 again: the issued total still adds up.
	if r := parseProbeLog("S 1\nI 100 2\nS 3\nI 100 4\nI 200 5\n"); r.issued != 300 {
		t.Fatalf("issued across a restart: %d", r.issued)
	}
}

func TestAttribute(t *testing.T) {
	bridge := parseProbeLog("S 100.00\nA 99.90\nI 10 100.10\nA 100.15\nI 20 100.20\nI 30 100.40\n")
	task := parseProbeLog("S 100.00\nI 10 100.10\nI 20 100.20\nA 100.35\nI 30 100.40\n")
	ds := []layerDrift{
		{kind: layerKinds[0], start: 100.0, end: 100.2, touched: true, readBack: 3},
		{kind: layerKinds[5], start: 100.3, end: 100.4, readBack: -1, said: "refused"},
	}
	rows, before := attribute(ds, bridge, task)
	if before != 1 {
		t.Errorf("answers before the first drift: %d, want 1", before)
	}
	a, b := rows[0], rows[5]
	if a.Drifts != 1 || a.AnsBridge != 1 || a.AnsTask != 0 || a.SentBridge != 20 || a.Touched != 1 || len(a.ReadBack) != 1 {
		t.Errorf("%s: %+v", a.Kind, a)
	}
	if b.Drifts != 1 || b.AnsBridge != 0 || b.AnsTask != 1 || b.SentTask != 5 || len(b.ReadBack) != 0 || b.Said != "refused" {
		t.Errorf("%s: %+v", b.Kind, b)
	}
	if rows[1].Drifts != 0 {
		t.Errorf("%s: %+v", rows[1].Kind, rows[1])
	}
}
