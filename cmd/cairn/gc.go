package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
)

func newGCCmd(a *app) *cobra.Command {
	var (
		opts      client.GCOptions
		grace     time.Duration
		packGrace time.Duration
	)
	cmd := &cobra.Command{
		Use:   "gc [--dry-run]",
		Short: "Reclaim the space of chunks no layer uses any more",
		Long: `Gc asks the server to collect garbage, online, beside pushes and pulls.
A chunk is dead when no layer references it (cairn rm deleted the layers
that did), nothing touched it for --grace (a push that found or uploaded
it, and may still commit a layer naming it), and no push in progress
uses it. Packs whose chunks are all dead are deleted; packs at least
--rewrite-ratio dead are rewritten (their live chunks copied to a new
pack); packs that nothing names (left by failed pushes, or emptied by a
rewrite) are marked, and deleted --pack-grace later, since a reader may
still be reading them. With --dry-run it prints the plan and changes
nothing. cairn serve also collects in the background (--gc-interval).

Layers are not deleted by gc: cairn rm deletes them. With --step-max-age,
gc first deletes the step records no build has recorded or hit within
that period (cairn serve: --step-max-age, off by default).`,
		Example: `  cairn gc --dry-run
  cairn gc
  cairn gc --grace 0 --pack-grace 0   # when no push is under way`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(a, cmd, false)
	f := cmd.Flags()
	f.BoolVar(&opts.DryRun, "dry-run", false, "print the plan, change nothing")
	f.DurationVar(&grace, "grace", time.Hour, "keep unreferenced chunks touched within this period (0: none)")
	f.DurationVar(&packGrace, "pack-grace", 15*time.Minute, "delete a marked pack only this long after it was marked (0: at once)")
	f.Float64Var(&opts.RewriteRatio, "rewrite-ratio", 0.5, "rewrite a pack whose dead bytes are at least this share of it (above 1: never)")
	f.DurationVar(&opts.StepMaxAge, "step-max-age", 0, "first delete the step records neither recorded nor hit within this period, e.g. 720h (0: keep them)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if grace < 0 || packGrace < 0 || opts.StepMaxAge < 0 {
			return fmt.Errorf("--grace, --pack-grace and --step-max-age must not be negative")
		}
		if opts.RewriteRatio <= 0 {
			return fmt.Errorf("--rewrite-ratio %v: want a share above 0", opts.RewriteRatio)
		}
		opts.Grace, opts.NoGrace = grace, grace == 0
		opts.PackGrace, opts.NoPackGrace = packGrace, packGrace == 0
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		rep, err := c.GC(ctx, opts)
		if err != nil {
			return cf.fail(err)
		}
		if cf.json {
			return cf.printJSON(rep)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "chunks\t%d: %d live, %d dead, %d unreferenced but within the grace period\n", rep.Chunks, rep.LiveChunks, rep.DeadChunks, rep.YoungChunks)
		fmt.Fprintf(tw, "packs\t%d: %d to delete, %d to rewrite, %d to mark, %d marked and due, %d marked and waiting\n",
			rep.Packs, rep.DeletePacks, rep.RewritePacks, rep.OrphanPacks, rep.DuePacks, rep.WaitingPacks)
		fmt.Fprintf(tw, "plan frees\t%s\n", humanBytes(rep.PlannedBytes))
		if opts.StepMaxAge > 0 {
			fmt.Fprintf(tw, "stale steps\t%d neither recorded nor hit within %v\n", rep.StaleSteps, opts.StepMaxAge)
		}
		if !opts.DryRun {
			fmt.Fprintf(tw, "done\t%d packs deleted, %d rewritten, %d marked; %d chunks deleted, %d moved\n",
				rep.DeletedPacks, rep.RewrittenPacks, rep.MarkedPacks, rep.DeletedChunks, rep.MovedChunks)
			fmt.Fprintf(tw, "freed\t%s (rewritten packs' share once their grace period is over)\n", humanBytes(rep.FreedBytes))
			for _, s := range rep.Skipped {
				fmt.Fprintf(tw, "skipped\t%s\n", s)
			}
		}
		fmt.Fprintf(tw, "took\t%v\n", rep.Duration.Round(time.Millisecond))
		return tw.Flush()
	}
	return cmd
}
