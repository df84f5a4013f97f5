package main

import (
	"fmt"
	"regexp"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
	"github.com/cairnbuild/cairn/cmd/internal/sizeflag"
)

func newGCCmd(a *app) *cobra.Command {
	var (
		opts      client.GCOptions
		grace     time.Duration
		packGrace time.Duration
		untagged  string // a duration; empty: the server's
		maxSize   string // a size; empty or 0: the server's
		compact   string // a duration; empty: the server's
	)
	cmd := &cobra.Command{
		Use:   "gc [--dry-run]",
		Short: "Reclaim the space of layers and chunks nothing uses any more",
		Long: `Gc asks the server to collect garbage, online, beside pushes and pulls.
cairn serve also collects in the background (--gc-interval). With
--dry-run it prints the plan and changes nothing.

First the layers: a layer only the registry holds (pushed over the OCI
API, not through cairn push) is deleted once nothing reaches it and
nothing used it for --grace. The roots are step records, tagged
manifests, manifests pushed or pulled within --untagged-max-age (the
server's, a day by default, unless given here) and manifests whose own
bytes are a root; a reached manifest reaches what it references and its
referrers (signatures, attestations). Layers pushed through the gRPC API
are roots themselves: they stay until cairn rm (or the quota) deletes
them. With --step-max-age, the step records no build has recorded or hit
within that period are deleted first.

With a quota (--max-size here, else cairn serve's), when the packs hold
more, the least recently used roots (layers pushed through the API, with
their step records, and tagged manifests --keep-tags does not match) are
evicted until the bytes they alone held, as estimated, bring the store
under it. What was used within --grace is never taken, so a store
written faster than that can stay over its quota.

Then the chunks: a chunk is dead when no layer references it, nothing
touched it for --grace (a push that found or uploaded it, and may still
commit a layer naming it), and no push in progress uses it. Packs whose
chunks are all dead are deleted; packs at least --rewrite-ratio dead are
rewritten (their live chunks copied to a new pack); packs that nothing
names (left by failed pushes, or emptied by a rewrite) are marked, and
deleted --pack-grace later, since a reader may still be reading them.

Last, compaction: pushes store each chunk as its own compressed record
(the ingest tier), fast to write and to read one at a time. Packs none
of whose chunks was touched within --compact-age (the server's, 6 hours
by default, unless given here) have their live chunks rewritten into
frames of several chunks, compressed harder (the compacted tier), and
are marked like emptied packs: at most 4 GiB of packs a collection,
oldest first, the rest in the next ones. cairn stat shows the bytes of
each tier.`,
		Example: `  cairn gc --dry-run
  cairn gc
  cairn gc --grace 0 --pack-grace 0   # when no push is under way
  cairn gc --max-size 500GiB --keep-tags 'main|latest|v.*'
  cairn gc --compact-age 1h           # compact what went unused for an hour`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(a, cmd, false)
	f := cmd.Flags()
	f.BoolVar(&opts.DryRun, "dry-run", false, "print the plan, change nothing")
	f.DurationVar(&grace, "grace", time.Hour, "keep unreferenced chunks touched within this period (0: none)")
	f.DurationVar(&packGrace, "pack-grace", 15*time.Minute, "delete a marked pack only this long after it was marked (0: at once)")
	f.Float64Var(&opts.RewriteRatio, "rewrite-ratio", 0.5, "rewrite a pack whose dead bytes are at least this share of it (above 1: never)")
	f.DurationVar(&opts.StepMaxAge, "step-max-age", 0, "first delete the step records neither recorded nor hit within this period, e.g. 720h (0: keep them)")
	f.StringVar(&untagged, "untagged-max-age", "", "keep a registry manifest no tag reaches this long after its last push or pull, e.g. 72h (0: not at all; empty: the server's --untagged-max-age)")
	f.StringVar(&maxSize, "max-size", "", "the quota: evict least recently used layers and tagged manifests until the store is estimated under this size, e.g. 500GiB (empty or 0: the server's --max-size)")
	f.StringVar(&opts.KeepTags, "keep-tags", "", "tags the quota never evicts: a Go regular expression matching whole tags, e.g. 'main|latest|v.*' (empty: the server's --keep-tags)")
	f.StringVar(&compact, "compact-age", "", "compact the packs none of whose chunks was touched within this period, e.g. 1h (0: no compaction; empty: the server's --compact-age)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if grace < 0 || packGrace < 0 || opts.StepMaxAge < 0 {
			return fmt.Errorf("--grace, --pack-grace and --step-max-age must not be negative")
		}
		if opts.RewriteRatio <= 0 {
			return fmt.Errorf("--rewrite-ratio %v: want a share above 0", opts.RewriteRatio)
		}
		if untagged != "" {
			d, err := time.ParseDuration(untagged)
			if err != nil || d < 0 {
				return fmt.Errorf("--untagged-max-age %q: want a duration of 0 or more, e.g. 72h", untagged)
			}
			opts.UntaggedMaxAge, opts.NoUntaggedMaxAge = d, d == 0
		}
		if compact != "" {
			d, err := time.ParseDuration(compact)
			if err != nil || d < 0 {
				return fmt.Errorf("--compact-age %q: want a duration of 0 or more, e.g. 6h", compact)
			}
			opts.CompactAge, opts.NoCompact = d, d == 0
		}
		if maxSize != "" {
			n, err := sizeflag.Parse("--max-size", maxSize, "500GiB", 0, 1<<60)
			if err != nil {
				return err
			}
			opts.MaxSize = n
		}
		if opts.KeepTags != "" {
			if _, err := regexp.Compile(opts.KeepTags); err != nil {
				return fmt.Errorf("--keep-tags %q is not a regular expression (Go RE2 syntax): %v", opts.KeepTags, err)
			}
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
		fmt.Fprintf(tw, "compact\t%d packs untouched for the compact age\n", rep.CompactPacks)
		if opts.StepMaxAge > 0 {
			fmt.Fprintf(tw, "stale steps\t%d neither recorded nor hit within %v\n", rep.StaleSteps, opts.StepMaxAge)
		}
		fmt.Fprintf(tw, "untagged manifests\t%d no tag reaches, unused for longer than the untagged age\n", rep.UntaggedManifests)
		fmt.Fprintf(tw, "unreached layers\t%d only the registry holds, that nothing reaches\n", rep.UnreachedLayers)
		fmt.Fprintf(tw, "stored\t%s in packs\n", humanBytes(rep.StoredBytes))
		if opts.DryRun {
			if rep.EvictedBytes > 0 {
				fmt.Fprintf(tw, "quota\twould evict %d layers, %d tagged manifests: about %s they alone hold\n",
					rep.EvictedLayers, rep.EvictedManifests, humanBytes(rep.EvictedBytes))
			}
		} else {
			fmt.Fprintf(tw, "evicted\t%d layers, %d tagged manifests: about %s they alone held\n",
				rep.EvictedLayers, rep.EvictedManifests, humanBytes(rep.EvictedBytes))
			fmt.Fprintf(tw, "deleted layers\t%d\n", rep.DeletedLayers)
			fmt.Fprintf(tw, "done\t%d packs deleted, %d rewritten, %d marked; %d chunks deleted, %d moved\n",
				rep.DeletedPacks, rep.RewrittenPacks, rep.MarkedPacks, rep.DeletedChunks, rep.MovedChunks)
			fmt.Fprintf(tw, "freed\t%s (rewritten packs' share once their grace period is over)\n", humanBytes(rep.FreedBytes))
			fmt.Fprintf(tw, "compacted\t%d packs: %s of chunks into %s of packs\n",
				rep.CompactedPacks, humanBytes(rep.CompactRead), humanBytes(rep.CompactWritten))
			for _, s := range rep.Skipped {
				fmt.Fprintf(tw, "skipped\t%s\n", s)
			}
		}
		fmt.Fprintf(tw, "took\t%v\n", rep.Duration.Round(time.Millisecond))
		return tw.Flush()
	}
	return cmd
}
