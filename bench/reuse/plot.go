package reuse

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
)

// WriteSVG draws the cumulative stored bytes as layers are ingested: the
// registry (each distinct compressed blob once) against cairn (unique chunks
// at the report's PlotAverage, zstd-compressed), with the raw bytes as a
// reference line. Hand-written SVG, so that no plotting library is needed.
func WriteSVG(w io.Writer, r *Report) error {
	const (
		width, height = 760, 420
		left, right   = 80, 200 // room for the axis labels and the legend
		top, bottom   = 40, 50
		pw, ph        = width - left - right, height - top - bottom
	)
	avg := r.PlotAverage()
	ci := r.avgIndex(avg)
	n := len(r.Layers)
	reg := make([]float64, n+1)
	cairn := make([]float64, n+1)
	raw := make([]float64, n+1)
	for i, l := range r.Layers {
		reg[i+1] = reg[i] + float64(l.RegistryBytes)
		raw[i+1] = raw[i] + float64(l.RawBytes)
		cairn[i+1] = cairn[i]
		if ci >= 0 && ci < len(l.Chunks) {
			cairn[i+1] += float64(l.Chunks[ci].StoredBytes)
		}
	}
	ymax := math.Max(math.Max(reg[n], cairn[n]), raw[n])
	unit, uname := axisUnit(ymax)
	step := niceStep(ymax / unit / 5)
	ytop := math.Ceil(ymax/unit/step) * step
	if ytop == 0 {
		ytop = 1
	}
	xmax := float64(max(n, 1))
	px := func(i int) float64 { return left + float64(i)/xmax*pw }
	py := func(v float64) float64 { return top + ph - v/unit/ytop*ph }

	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="24" font-size="15" font-weight="bold">Cumulative stored bytes as layers are ingested</text>`+"\n", left)
	// Grid and y labels.
	for v := 0.0; v <= ytop+step/2; v += step {
		y := py(v * unit)
		p(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, left+pw, y)
		p(`<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", left-6, y, trimFloat(v))
	}
	p(`<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">%s</text>`+"\n", top+ph/2, top+ph/2, uname)
	// x ticks: at most ~10 labels.
	xstep := max(1, int(math.Ceil(float64(n)/10)))
	for i := 0; i <= n; i += xstep {
		x := px(i)
		p(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999"/>`+"\n", x, top+ph, x, top+ph+4)
		p(`<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x, top+ph+18, i)
	}
	p(`<text x="%d" y="%d" text-anchor="middle">layers ingested</text>`+"\n", left+pw/2, height-8)
	p(`<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", left, top, pw, ph)

	series := []struct {
		name, color, dash string
		ys                []float64
	}{
		{"raw (uncompressed)", "#999999", "4 4", raw},
		{"registry (blobs)", "#d62728", "", reg},
		{fmt.Sprintf("cairn (%s, zstd)", sizeLabel(avg)), "#1f77b4", "", cairn},
	}
	for k, s := range series {
		p(`<polyline fill="none" stroke="%s" stroke-width="2"`, s.color)
		if s.dash != "" {
			p(` stroke-dasharray="%s"`, s.dash)
		}
		p(` points="`)
		for i, v := range s.ys {
			p("%.1f,%.1f ", px(i), py(v))
		}
		p(`"/>` + "\n")
		for i, v := range s.ys {
			if n <= 40 && i > 0 {
				p(`<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`+"\n", px(i), py(v), s.color)
			}
		}
		ly := top + 10 + 20*k
		p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"`, left+pw+10, ly, left+pw+30, ly, s.color)
		if s.dash != "" {
			p(` stroke-dasharray="%s"`, s.dash)
		}
		p("/>\n")
		p(`<text x="%d" y="%d" dominant-baseline="middle">%s</text>`+"\n", left+pw+35, ly, html.EscapeString(s.name))
	}
	ly := top + 10 + 20*len(series) + 10
	p(`<text x="%d" y="%d">registry %s</text>`+"\n", left+pw+10, ly, humanBytes(int64(reg[n])))
	p(`<text x="%d" y="%d">cairn %s</text>`+"\n", left+pw+10, ly+16, humanBytes(int64(cairn[n])))
	if reg[n] > 0 {
		p(`<text x="%d" y="%d">cairn/registry %.2f</text>`+"\n", left+pw+10, ly+32, cairn[n]/reg[n])
	}
	p("</svg>\n")
	return bw.Flush()
}

// axisUnit picks the binary unit the y axis is labelled in.
func axisUnit(v float64) (float64, string) {
	switch {
	case v >= 1<<30:
		return 1 << 30, "GiB"
	case v >= 1<<20:
		return 1 << 20, "MiB"
	case v >= 1<<10:
		return 1 << 10, "KiB"
	}
	return 1, "bytes"
}

// niceStep rounds s up to 1, 2 or 5 times a power of ten.
func niceStep(s float64) float64 {
	if s <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(s)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= s {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%g", math.Round(v*1000)/1000)
}
