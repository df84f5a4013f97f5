package reuse

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// Report is the result of an analysis. Its JSON form is what
// `cairn-bench reuse --json` prints; field names carry their units.
type Report struct {
	// Averages are the average chunk sizes analysed, in the order of every
	// Chunks slice below.
	Averages []int   `json:"chunk_avg_bytes"`
	Layers   []Layer `json:"layers"`
	Total    Total   `json:"total"`
}

// Layer is what one layer adds, given the layers analysed before it.
type Layer struct {
	Source      string `json:"source"`      // path, and which image and layer in it
	Digest      string `json:"digest"`      // of the bytes as given (compressed or not)
	DiffID      string `json:"diff_id"`     // of the uncompressed tar
	Compression string `json:"compression"` // none, gzip or zstd
	Duplicate   bool   `json:"duplicate,omitempty"`

	RawBytes  int64 `json:"raw_bytes"`  // uncompressed size
	BlobBytes int64 `json:"blob_bytes"` // size as given
	// RegistryBytes is what a registry stores for this layer: the blob's
	// compressed size the first time it is seen, else 0. A plain layer
	// counts as the gzip a client would push.
	RegistryBytes int64 `json:"registry_bytes"`

	Files           int64  `json:"files"`             // regular files in the tar
	UniqueFiles     int64  `json:"unique_files"`      // of which not seen before, by content
	FileBytes       int64  `json:"file_bytes"`        // their content, headers and padding left out
	FileUniqueBytes int64  `json:"file_unique_bytes"` // content not seen before
	FileError       string `json:"file_error,omitempty"`

	Chunks []ChunkFigures `json:"chunks"` // one per average chunk size

	// TarChunks is the plot's chunk size applied to the tar split as cairn
	// stores it: the files' contents and the meta stream (headers and the
	// rest) chunked apart, so that new timestamps change only the latter.
	TarChunks ChunkFigures `json:"tar_chunks"`

	// Reproduced, for a gzip or zstd layer, names the encoder (package
	// recompress) that reproduces its exact bytes from its tar, or is
	// "none": cairn then stores the blob as it came.
	Reproduced string `json:"reproduced,omitempty"`
}

// ChunkFigures are the chunk-level figures at one average chunk size.
type ChunkFigures struct {
	AvgBytes    int   `json:"avg_bytes"`
	Chunks      int64 `json:"chunks"`       // chunks cut
	NewChunks   int64 `json:"new_chunks"`   // of which not seen before
	UniqueBytes int64 `json:"unique_bytes"` // their uncompressed size
	StoredBytes int64 `json:"stored_bytes"` // their size compressed one by one with zstd
}

// Total sums the layers.
type Total struct {
	Layers          int            `json:"layers"`
	RawBytes        int64          `json:"raw_bytes"`
	BlobBytes       int64          `json:"blob_bytes"`
	RegistryBytes   int64          `json:"registry_bytes"`
	Files           int64          `json:"files"`
	UniqueFiles     int64          `json:"unique_files"`
	FileBytes       int64          `json:"file_bytes"`
	FileUniqueBytes int64          `json:"file_unique_bytes"`
	Chunks          []ChunkFigures `json:"chunks"`
	TarChunks       ChunkFigures   `json:"tar_chunks"`
	// Compressed layers, and of them those an encoder reproduces, by
	// encoder (encoder/level, without the version).
	Compressed int            `json:"compressed"`
	Reproduced map[string]int `json:"reproduced,omitempty"`
	// What cairn stores at the plot's chunk size, with and without storing
	// reproducible compressed layers as their tar: with, a reproduced or
	// plain layer costs its new chunks and any other compressed layer its
	// blob (each distinct blob once); without, every compressed layer
	// costs its blob.
	StoredWithRecompress int64 `json:"stored_with_recompress,omitempty"`
	StoredWithout        int64 `json:"stored_without_recompress,omitempty"`
}

// PlotAverage is the chunk size the plot and the per-layer table show:
// cairn's default (chunker.V1), or the nearest one analysed.
func (r *Report) PlotAverage() int {
	best := 0
	for i, avg := range r.Averages {
		if i == 0 || absDiff(avg, 256<<10) < absDiff(r.Averages[best], 256<<10) {
			best = i
		}
	}
	if len(r.Averages) == 0 {
		return 0
	}
	return r.Averages[best]
}

func (r *Report) avgIndex(avg int) int {
	for i, a := range r.Averages {
		if a == avg {
			return i
		}
	}
	return -1
}

func absDiff(a, b int) int {
	if a > b {
		return a - b
	}
	return b - a
}

// WriteText writes the report as tables for people: one line per layer,
// the totals, and the what-if table of chunk sizes.
func (r *Report) WriteText(w io.Writer) error {
	avg := r.PlotAverage()
	ci := r.avgIndex(avg)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	cl := "chunk" + sizeLabel(avg)
	fmt.Fprintf(tw, "#\tlayer\tcomp\traw\tregistry +\tfiles unique +\t%s unique +\t%s stored +\t\n", cl, cl)
	for i, l := range r.Layers {
		var c ChunkFigures
		if ci >= 0 && ci < len(l.Chunks) {
			c = l.Chunks[ci]
		}
		src := l.Source
		if len(src) > 48 {
			src = "…" + src[len(src)-47:]
		}
		if l.Duplicate {
			src += " (dup)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", i+1, src, l.Compression,
			humanBytes(l.RawBytes), humanBytes(l.RegistryBytes), humanBytes(l.FileUniqueBytes),
			humanBytes(c.UniqueBytes), humanBytes(c.StoredBytes))
	}
	t := r.Total
	var c ChunkFigures
	if ci >= 0 && ci < len(t.Chunks) {
		c = t.Chunks[ci]
	}
	fmt.Fprintf(tw, "\ttotal\t\t%s\t%s\t%s\t%s\t%s\t\n", humanBytes(t.RawBytes), humanBytes(t.RegistryBytes),
		humanBytes(t.FileUniqueBytes), humanBytes(c.UniqueBytes), humanBytes(c.StoredBytes))
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\n%d layers, %s raw (%d files, %s of file content).\n", t.Layers, humanBytes(t.RawBytes), t.Files, humanBytes(t.FileBytes))
	fmt.Fprintf(w, "registry (each distinct compressed blob once): %s = %s of raw\n", humanBytes(t.RegistryBytes), pct(t.RegistryBytes, t.RawBytes))
	fmt.Fprintf(w, "file level (distinct file contents, uncompressed): %s = %s of file content (%d of %d files distinct)\n\n",
		humanBytes(t.FileUniqueBytes), pct(t.FileUniqueBytes, t.FileBytes), t.UniqueFiles, t.Files)

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "avg chunk\tchunks\tunique chunks\tunique bytes\tunique/raw\tzstd stored\tstored/raw\tstored/registry\t\n")
	for _, c := range t.Chunks {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t\n", sizeLabel(c.AvgBytes), c.Chunks, c.NewChunks,
			humanBytes(c.UniqueBytes), pct(c.UniqueBytes, t.RawBytes), humanBytes(c.StoredBytes),
			pct(c.StoredBytes, t.RawBytes), ratio(c.StoredBytes, t.RegistryBytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if tc := t.TarChunks; tc.Chunks > 0 {
		var plain ChunkFigures
		if ci >= 0 && ci < len(t.Chunks) {
			plain = t.Chunks[ci]
		}
		fmt.Fprintf(w, "\nat %s chunks: file level %s distinct; tar-aware (contents and headers chunked apart, as cairn stores tars) %s unique, %s stored; plain chunking %s unique, %s stored\n",
			sizeLabel(avg), humanBytes(t.FileUniqueBytes), humanBytes(tc.UniqueBytes), humanBytes(tc.StoredBytes),
			humanBytes(plain.UniqueBytes), humanBytes(plain.StoredBytes))
	}
	if t.Compressed > 0 {
		var by []string
		for enc, n := range t.Reproduced {
			by = append(by, fmt.Sprintf("%s: %d", enc, n))
		}
		sort.Strings(by)
		n := 0
		for _, k := range t.Reproduced {
			n += k
		}
		fmt.Fprintf(w, "\ncompressed layers: %d, of which %d reproduced from their tar (%s)\n", t.Compressed, n, strings.Join(by, ", "))
		fmt.Fprintf(w, "stored at %s chunks: %s storing reproduced layers as their tar, %s storing compressed layers as they came (%s)\n",
			sizeLabel(avg), humanBytes(t.StoredWithRecompress), humanBytes(t.StoredWithout), ratio(t.StoredWithRecompress, t.StoredWithout))
	}
	return nil
}

func pct(a, b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(a)/float64(b))
}

func ratio(a, b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", float64(a)/float64(b))
}

// sizeLabel writes a chunk size the way people say it: 16K, 1M.
func sizeLabel(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprint(n)
}

// humanBytes writes n in binary units with three significant digits.
func humanBytes(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	i := -1
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	s := fmt.Sprintf("%.3g", f)
	if strings.Contains(s, "e") {
		s = fmt.Sprintf("%.0f", f)
	}
	return s + " " + string(units[i]) + "iB"
}
