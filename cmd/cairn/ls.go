package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
)

func newLsCmd(a *app) *cobra.Command {
	var (
		limit  int
		images bool
	)
	cmd := &cobra.Command{
		Use:   "ls [--images]",
		Short: "List the layers on the server, or the images of its registry",
		Long: `Ls lists the layers on the server: digest, size as pushed, stored size
(compressed; chunks shared with other layers counted in full), chunks and
creation time. A layer whose chunks the server found bad shows "(N DAMAGED)"
after its chunk count: it cannot be pulled until a push heals it.

With --images it lists the images of the server's OCI registry (cairn serve
--registry-listen) instead, one row per tag, ordered by repository and tag:
the manifest's digest (in full, to paste into cairn rm REPO@DIGEST), the size
of the manifest and everything it references (each blob once, every
platform of a multi-platform image) and what those blobs take stored. Images
the server does not hold whole (platforms never pushed) have a "missing"
count in --json; their sizes leave the missing parts out. Untagged
manifests are not listed.`,
		Example: `  cairn ls
  cairn ls --limit 10 --json
  cairn ls --images
  cairn ls --images --limit 20 --json`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(a, cmd, false)
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most this many layers, or images with --images (0: all)")
	cmd.Flags().BoolVar(&images, "images", false, "list the registry's images (one row per tag) instead of layers")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if limit < 0 {
			return fmt.Errorf("--limit %d: must be at least 0", limit)
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		if images {
			return lsImages(ctx, a, cf, c, limit)
		}
		layers, err := allPages(limit, func(token string) ([]client.LayerInfo, string, error) { return c.List(ctx, token, 0) })
		if err != nil {
			return cf.fail(err)
		}
		if cf.json {
			return cf.printJSON(layers)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "DIGEST\tSIZE\tSTORED\tCHUNKS\tCREATED\n")
		for _, l := range layers {
			created := ""
			if !l.Created.IsZero() {
				created = l.Created.Local().Format(time.DateTime)
			}
			chunks := fmt.Sprint(l.Chunks)
			if l.DamagedChunks > 0 {
				chunks += fmt.Sprintf(" (%d DAMAGED)", l.DamagedChunks)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.Digest, humanBytes(l.Size), humanBytes(l.StoredSize), chunks, created)
		}
		return tw.Flush()
	}
	return cmd
}

// lsImages is ls --images. It reads pages until it has limit images (0:
// all): the server sums each image's sizes when asked, so pages not shown
// are not asked for.
func lsImages(ctx context.Context, a *app, cf *clientFlags, c *client.Client, limit int) error {
	images := []client.ImageInfo{}
	for token := ""; ; {
		page, next, err := c.ListImages(ctx, token, 0)
		if err != nil {
			return cf.fail(err)
		}
		images = append(images, page...)
		if next == "" || (limit > 0 && len(images) >= limit) {
			break
		}
		token = next
	}
	if limit > 0 && len(images) > limit {
		images = images[:limit]
	}
	if cf.json {
		return cf.printJSON(images)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "REPOSITORY\tTAG\tDIGEST\tSIZE\tSTORED\n")
	for _, img := range images {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", img.Repository, img.Tag, img.Digest, humanBytes(img.Size), humanBytes(img.StoredSize))
	}
	return tw.Flush()
}

// allPages reads the pages of a listing until it has limit items (0: all)
// and returns at most limit of them, never nil.
func allPages[T any](limit int, page func(token string) ([]T, string, error)) ([]T, error) {
	out := []T{}
	for token := ""; ; {
		items, next, err := page(token)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
		if next == "" || (limit > 0 && len(out) >= limit) {
			break
		}
		token = next
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}
