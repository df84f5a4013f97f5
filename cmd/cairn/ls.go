package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
)

func newLsCmd(a *app) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the layers on the server",
		Example: `  cairn ls
  cairn ls --limit 10 --json`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(a, cmd, false)
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most this many layers (0: all)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if limit < 0 {
			return fmt.Errorf("--limit %d: must be at least 0", limit)
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		layers := []client.LayerInfo{}
		for token := ""; ; {
			page, next, err := c.List(ctx, token, 0)
			if err != nil {
				return cf.fail(err)
			}
			layers = append(layers, page...)
			if next == "" || (limit > 0 && len(layers) >= limit) {
				break
			}
			token = next
		}
		if limit > 0 && len(layers) > limit {
			layers = layers[:limit]
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
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", l.Digest, humanBytes(l.Size), humanBytes(l.StoredSize), l.Chunks, created)
		}
		return tw.Flush()
	}
	return cmd
}
