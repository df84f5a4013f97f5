package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/bench/reuse"
)

// newBenchCmd groups the measurement subcommands: reuse analysis of layers
// and images (here), load against a running server (bench_load.go), and the
// raw-S3 baseline and big-layer generator of the corpus run (bench_s3.go).
func newBenchCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure layer reuse and server load",
	}
	cmd.AddCommand(newBenchReuseCmd(a), newBenchLoadCmd(a), newBenchS3Cmd(a), newBenchGenCmd(a))
	return cmd
}

func newBenchReuseCmd(a *app) *cobra.Command {
	var (
		asJSON   bool
		plot     string
		out      string
		avgs     string
		jsonOut  string
		progress bool
	)
	cmd := &cobra.Command{
		Use:   "reuse PATH...",
		Short: "Measure how much a set of layers or images shares: registry, file and chunk level",
		Long: `Reuse reads layer tarballs (plain, gzip or zstd), docker save tarballs and
OCI image layouts, in the order given, and reports per layer and in total:
the raw (uncompressed) bytes; what a registry stores (each distinct
compressed blob once; a plain layer counts as its gzip); the distinct file
contents; and, for several average chunk sizes, the distinct chunks and
their zstd-compressed size, which is what cairn stores.

Nothing is sent anywhere: this runs locally, reading each layer once.`,
		Example: `  cairn bench reuse app-v1.tar app-v2.tar
  cairn bench reuse ./oci-layout --json > reuse.json
  cairn bench reuse layers/*.tar.gz --out report.txt   # and report.svg next to it`,
		Args: cobra.MinimumNArgs(1),
	}
	fs := cmd.Flags()
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON, for scripts")
	fs.StringVar(&out, "out", "", "write the report to FILE instead of stdout (and the plot next to it, as .svg)")
	fs.StringVar(&jsonOut, "json-out", "", "also write the report as JSON to FILE (one analysis, both forms)")
	fs.StringVar(&plot, "plot", "", "write an SVG plot of cumulative stored bytes (registry versus cairn) to FILE")
	fs.StringVar(&avgs, "avg", "16K,64K,256K,1M", "average chunk sizes of the what-if table, powers of two")
	fs.BoolVar(&progress, "progress", false, "print a line per layer on stderr as it is analysed")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		averages, err := benchParseSizes(avgs)
		if err != nil {
			return fmt.Errorf("--avg: %w", err)
		}
		opt := reuse.Options{Averages: averages}
		if progress {
			opt.Progress = a.stderr
		}
		an, err := reuse.New(opt)
		if err != nil {
			return err
		}
		for _, p := range args {
			if err := an.AddPath(cmd.Context(), p); err != nil {
				return err
			}
		}
		r := an.Report()

		if out != "" && plot == "" {
			plot = strings.TrimSuffix(out, filepath.Ext(out)) + ".svg"
		}
		if out != "" {
			if err := benchWriteFile(out, func(w io.Writer) error { return writeReuseReport(w, r, asJSON) }); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
		} else if err := writeReuseReport(a.stdout, r, asJSON); err != nil {
			return err
		}
		if jsonOut != "" {
			if err := benchWriteFile(jsonOut, func(w io.Writer) error { return writeReuseReport(w, r, true) }); err != nil {
				return fmt.Errorf("--json-out: %w", err)
			}
		}
		if plot != "" {
			if err := benchWriteFile(plot, func(w io.Writer) error { return reuse.WriteSVG(w, r) }); err != nil {
				return fmt.Errorf("plot: %w", err)
			}
			if !asJSON || out != "" {
				fmt.Fprintf(a.stderr, "plot written to %s\n", plot)
			}
		}
		return nil
	}
	return cmd
}

func writeReuseReport(w io.Writer, r *reuse.Report, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	return r.WriteText(w)
}

// benchWriteFile writes a file through a temporary one in the same
// directory, so that a failed write leaves no half file behind.
func benchWriteFile(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o644); err != nil { // CreateTemp makes it 0600
		f.Close()
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// benchParseSizes reads a comma-separated list of sizes with optional binary
// suffixes: "16K,64K,1M" or "65536".
func benchParseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := benchParseSize(f)
		if err != nil {
			return nil, err
		}
		out = append(out, int(n))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no sizes in %q", s)
	}
	return out, nil
}

// benchParseSize reads a size like 4096, 64K, 256KiB, 1M, 4G (binary units).
func benchParseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (want e.g. 4096, 64K, 1M, 4G)", s)
	}
	return n * mult, nil
}
