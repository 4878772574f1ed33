package main

import (
	"fmt"
	"image/color"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// writeChart draws the empirical CDF of repair latency per contender on a
// log time axis: the fraction of drifts repaired within x. A line that
// stops below 1 is drifts never repaired; static never leaves 0.
func writeChart(res *results, path string) error {
	p := plot.New()
	p.Title.Text = "IMDS block: time from drift to verified repair"
	p.X.Label.Text = "time since the drift (log scale)"
	p.Y.Label.Text = "fraction of drifts repaired"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = msTicks{}
	p.Y.Min, p.Y.Max = 0, 1.02
	p.Add(plotter.NewGrid())
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Points(5)
	p.Legend.YOffs = vg.Points(5)
	colors := map[string]color.Color{
		"imdsguard (nft)":    color.RGBA{0x1f, 0x77, 0xb4, 0xff},
		"imdsguard (legacy)": color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
		"poll (nft)":         color.RGBA{0xff, 0x7f, 0x0e, 0xff},
		"static (nft)":       color.RGBA{0xd6, 0x27, 0x28, 0xff},
	}
	xmin, xmax := 1.0, 100000.0
	for _, g := range groups(res.samples, "repair", false) {
		n := len(g.samples)
		rep := slices.Clone(g.repaired)
		slices.Sort(rep)
		var name string
		if len(rep) == 0 {
			name = fmt.Sprintf("%s: 0 of %d repaired within %v", g.label, n, g.window)
		} else {
			st := summarize(rep)
			name = fmt.Sprintf("%s: n=%d, median %s", g.label, n, fmtMS(st.med))
			if nr := g.notRepaired(); nr > 0 {
				name += fmt.Sprintf(", %d never within %v", nr, g.window)
			}
		}
		xys := make(plotter.XYs, 0, len(rep)+2)
		xys = append(xys, plotter.XY{X: max(xmin, 0.5), Y: 0})
		for i, v := range rep {
			xys = append(xys, plotter.XY{X: max(v, xmin), Y: float64(i+1) / float64(n)})
		}
		end := ms(g.window)
		if len(rep) > 0 && rep[len(rep)-1] > end {
			end = rep[len(rep)-1]
		}
		xys = append(xys, plotter.XY{X: min(max(end, xmin), xmax), Y: float64(len(rep)) / float64(n)})
		l, err := plotter.NewLine(xys)
		if err != nil {
			return err
		}
		l.StepStyle = plotter.PostStep
		l.Color = colors[g.label]
		l.Width = vg.Points(2)
		if len(rep) == 0 {
			l.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
		}
		p.Add(l)
		p.Legend.Add(name, l)
	}
	for _, tl := range []struct {
		x    float64
		text string
	}{{20, "20 ms"}, {100, "100 ms"}, {ms(res.cfg.resync) + 50, "resync + 50 ms"}} {
		v, err := plotter.NewLine(plotter.XYs{{X: tl.x, Y: 0}, {X: tl.x, Y: 1.02}})
		if err != nil {
			return err
		}
		v.Color = color.Gray{Y: 0x90}
		v.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
		p.Add(v)
	}
	p.X.Min, p.X.Max = xmin, xmax
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	_ = draw.PosRight
	return p.Save(10*vg.Inch, 5.5*vg.Inch, path)
}

// msTicks labels a millisecond log axis in human units.
type msTicks struct{}

func (msTicks) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for v := 1.0; v <= max*1.0001; v *= 10 {
		if v < min*0.9999 {
			continue
		}
		label := fmtMS(v)
		switch v {
		case 1000:
			label = "1 s"
		case 10000:
			label = "10 s"
		case 100000:
			label = "100 s"
		case 1:
			label = "1 ms"
		case 10:
			label = "10 ms"
		case 100:
			label = "100 ms"
		}
		ts = append(ts, plot.Tick{Value: v, Label: label})
		for m := 2.0; m < 10; m++ {
			if v*m <= max {
				ts = append(ts, plot.Tick{Value: v * m})
			}
		}
	}
	return ts
}
