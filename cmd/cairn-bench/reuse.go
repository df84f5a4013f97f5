package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/bench/reuse"
)

// newReuseCmd is `cairn-bench reuse`: how much a set of layers shares, and
// what cairn would store for it.
func newReuseCmd(a *app) *cobra.Command {
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
		Example: `  cairn-bench reuse app-v1.tar app-v2.tar
  cairn-bench reuse ./oci-layout --json > reuse.json
  cairn-bench reuse layers/*.tar.gz --out report.txt   # and report.svg next to it`,
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
		averages, err := parseSizes(avgs)
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
			if err := writeFile(out, func(w io.Writer) error { return writeReuseReport(w, r, asJSON) }); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
		} else if err := writeReuseReport(a.stdout, r, asJSON); err != nil {
			return err
		}
		if jsonOut != "" {
			if err := writeFile(jsonOut, func(w io.Writer) error { return writeReuseReport(w, r, true) }); err != nil {
				return fmt.Errorf("--json-out: %w", err)
			}
		}
		if plot != "" {
			if err := writeFile(plot, func(w io.Writer) error { return reuse.WriteSVG(w, r) }); err != nil {
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

// writeFile writes a file through a temporary one in the same
// directory, so that a failed write leaves no half file behind.
func writeFile(path string, write func(io.Writer) error) error {
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
