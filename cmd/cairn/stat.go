package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newStatCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stat [DIGEST]",
		Short: "Show a layer, or the server's totals",
		Long: `Stat with a layer digest shows the layer: size, stored size, media type,
chunks. Without one it shows the server's totals, in one call: layers,
distinct chunks, step records, the registry's repositories, tags and
manifests (a manifest held by two repositories counts twice; their blobs
are layers and counted there too), the layers' logical bytes, the bytes the
chunks take stored (compressed, each chunk once) and the ratio of the two
(the server counts them in one walk of its index). The stored bytes are
split by tier: ingest, chunks as pushes store them, one compressed record
each; compacted, chunks a collection rewrote into frames of several,
compressed harder, once they went unused for the compact age (cairn serve
--compact-age, cairn gc --compact-age).`,
		Example: `  cairn stat
  cairn stat sha256:... --json`,
		Args: cobra.MaximumNArgs(1),
	}
	cf := addClientFlags(a, cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 1 {
			d, err := parseDigest("layer", args[0])
			if err != nil {
				return err
			}
			ctx, c, done, err := cf.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			info, err := c.Stat(ctx, d)
			if err != nil {
				return cf.layerFail(d, err)
			}
			if cf.json {
				return cf.printJSON(info)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "digest\t%s\n", info.Digest)
			fmt.Fprintf(tw, "size\t%d (%s)\n", info.Size, humanBytes(info.Size))
			fmt.Fprintf(tw, "stored\t%d (%s)\n", info.StoredSize, humanBytes(info.StoredSize))
			fmt.Fprintf(tw, "media type\t%s\n", info.MediaType)
			fmt.Fprintf(tw, "chunks\t%d\n", info.Chunks)
			if info.DamagedChunks > 0 {
				fmt.Fprintf(tw, "damaged\t%d chunks quarantined: pulls fail until a push of this layer (or of one holding those chunks) heals it\n", info.DamagedChunks)
			}
			if !info.Created.IsZero() {
				fmt.Fprintf(tw, "created\t%s\n", info.Created.Local().Format(time.RFC3339))
			}
			if !info.Accessed.IsZero() {
				fmt.Fprintf(tw, "accessed\t%s\n", info.Accessed.Local().Format(time.RFC3339))
			}
			return tw.Flush()
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		st, err := c.Stats(ctx)
		if err != nil {
			return cf.fail(err)
		}
		if cf.json {
			return cf.printJSON(st)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "server\t%s\n", cf.server)
		fmt.Fprintf(tw, "layers\t%d\n", st.Layers)
		fmt.Fprintf(tw, "chunks\t%d distinct\n", st.Chunks)
		fmt.Fprintf(tw, "steps\t%d\n", st.Steps)
		fmt.Fprintf(tw, "repositories\t%d\n", st.Repositories)
		fmt.Fprintf(tw, "tags\t%d\n", st.Tags)
		fmt.Fprintf(tw, "manifests\t%d\n", st.Manifests)
		fmt.Fprintf(tw, "logical\t%d (%s)\n", st.LogicalBytes, humanBytes(st.LogicalBytes))
		fmt.Fprintf(tw, "unique\t%d (%s, distinct chunks uncompressed)\n", st.UniqueBytes, humanBytes(st.UniqueBytes))
		fmt.Fprintf(tw, "stored\t%d (%s)\n", st.StoredBytes, humanBytes(st.StoredBytes))
		fmt.Fprintf(tw, "ingest\t%d (%s) in %d chunks, one record each, as pushed\n", st.IngestBytes, humanBytes(st.IngestBytes), st.IngestChunks)
		fmt.Fprintf(tw, "compacted\t%d (%s) in %d chunks, in frames of several\n", st.CompactedBytes, humanBytes(st.CompactedBytes), st.CompactedChunks)
		if st.Quarantined > 0 {
			fmt.Fprintf(tw, "quarantined\t%d chunks found bad (cairn verify lists the damaged layers; a push that has them heals them)\n", st.Quarantined)
		}
		if st.DedupRatio > 0 {
			fmt.Fprintf(tw, "dedup\t%.2fx (logical / stored: deduplication and compression)\n", st.DedupRatio)
		}
		return tw.Flush()
	}
	return cmd
}
