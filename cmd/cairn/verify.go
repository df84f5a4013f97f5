package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/cmd/internal/sizeflag"
)

func newVerifyCmd(a *app) *cobra.Command {
	var rate string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every stored chunk against the index, and quarantine the bad ones",
		Long: `Verify asks the server to read its whole blob store, each pack once (on S3
with ranged reads), and check every pack table and every chunk record
against the index: each record is decompressed and hashed. A chunk whose
record is bad, or whose pack is gone, is quarantined: the server stops
reporting it as stored, so the next push of any layer that holds it sends
it again and heals it, and the layers that use it show as damaged in
cairn ls and cairn stat until then. Verify prints what it checked, the
quarantined chunks, the damaged layers, the step records naming them and
any other problem (an unreadable pack table, a table that disagrees with
the index).

It runs online, beside pushes and pulls, and takes as long as reading the
store: --rate bounds what it reads per second. cairn serve also scrubs in
the background (--scrub-interval, --scrub-rate). Verify exits with status 1
if anything is damaged.`,
		Example: `  cairn verify
  cairn verify --rate 64MiB --json`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(a, cmd, false)
	cmd.Flags().StringVar(&rate, "rate", "0", "read at most this many bytes a second from the blob store, e.g. 64MiB (0: no limit)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		perSec, err := sizeflag.Parse("--rate", rate, "64MiB", 0, 1<<40)
		if err != nil {
			return err
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		rep, err := c.Verify(ctx, perSec)
		if err != nil {
			return cf.fail(err)
		}
		if cf.json {
			if err := cf.printJSON(rep); err != nil {
				return err
			}
		} else {
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "packs\t%d (%s read)\n", rep.Packs, humanBytes(rep.ReadBytes))
			fmt.Fprintf(tw, "chunks checked\t%d\n", rep.Chunks)
			fmt.Fprintf(tw, "quarantined\t%d (%d by this run)\n", len(rep.Quarantined), rep.NewlyQuarantined)
			for _, id := range rep.Quarantined {
				fmt.Fprintf(tw, "  chunk\t%s\n", id)
			}
			fmt.Fprintf(tw, "damaged layers\t%d\n", len(rep.DamagedLayers))
			for _, d := range rep.DamagedLayers {
				fmt.Fprintf(tw, "  layer\t%s\n", d)
			}
			fmt.Fprintf(tw, "damaged steps\t%d\n", len(rep.DamagedSteps))
			for _, k := range rep.DamagedSteps {
				fmt.Fprintf(tw, "  step\t%s\n", k)
			}
			fmt.Fprintf(tw, "problems\t%d\n", len(rep.Problems))
			for _, p := range rep.Problems {
				fmt.Fprintf(tw, "  \t%s\n", p)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
		if len(rep.Quarantined) > 0 || len(rep.Problems) > 0 {
			return fmt.Errorf("the store is damaged: %d chunks quarantined, %d layers damaged, %d other problems; push the damaged layers again to heal them",
				len(rep.Quarantined), len(rep.DamagedLayers), len(rep.Problems))
		}
		return nil
	}
	return cmd
}
