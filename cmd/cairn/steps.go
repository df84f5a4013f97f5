package main

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
)

func newStepsCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "steps",
		Short: "List or delete the server's step records",
		Long: `Steps manages the build cache's step records: what cairn record (or a
builder) stored and cairn lookup finds. Deleting a layer (cairn rm) deletes
the records that name it; cairn steps rm deletes records one by one.

A record stores the normalized instruction (at most 128 KiB), its build
args (at most 64 KiB together) and a config fragment (at most 64 KiB);
larger records are refused.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newStepsLsCmd(a), newStepsRmCmd(a))
	return cmd
}

func newStepsLsCmd(a *app) *cobra.Command {
	var (
		limit int
		layer string
	)
	cmd := &cobra.Command{
		Use:   "ls [--layer DIGEST]",
		Short: "List step records: key, instruction, layer, hits",
		Long: `Ls lists the step records in key order: key, hits, layer (or - for a step
without one), creation time and the instruction (its first line, cut at 60
characters; --json has everything). Listing does not count as hits.`,
		Example: `  cairn steps ls
  cairn steps ls --layer sha256:... --json`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(a, cmd, false)
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most this many records (0: all)")
	cmd.Flags().StringVar(&layer, "layer", "", "only the records whose layer is this digest")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if limit < 0 {
			return fmt.Errorf("--limit %d: must be at least 0", limit)
		}
		var d digest.Digest
		if layer != "" {
			var err error
			if d, err = parseDigest("--layer", layer); err != nil {
				return err
			}
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		recs, err := allPages(limit, func(token string) ([]client.StepRecord, string, error) { return c.ListSteps(ctx, token, 0, d) })
		if err != nil {
			return cf.fail(err)
		}
		if cf.json {
			return cf.printJSON(recs)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "KEY\tHITS\tLAYER\tCREATED\tINSTRUCTION\n")
		for _, r := range recs {
			l := "-"
			if r.Layer != nil {
				l = r.Layer.Digest.String()
			}
			created := ""
			if !r.Created.IsZero() {
				created = r.Created.Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", r.Key, r.Hits, l, created, shortInstruction(r.Step.Instruction))
		}
		return tw.Flush()
	}
	return cmd
}

// shortInstruction is the first line of an instruction, at most 60
// characters, for a table.
func shortInstruction(s string) string {
	line := s
	for i, r := range s {
		if r == '\n' {
			line = s[:i] + " …"
			break
		}
	}
	if rs := []rune(line); len(rs) > 60 {
		line = string(rs[:59]) + "…"
	}
	return line
}

func newStepsRmCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rm KEY...",
		Short: "Delete step records by key",
		Long: `Rm deletes the step records with the given keys (the KEY column of cairn
steps ls, or the key cairn lookup prints). Their layers stay. Rm goes on
past a key that does not exist and then exits with status 3.`,
		Example: `  cairn steps rm sha256:...`,
		Args:    cobra.MinimumNArgs(1),
	}
	cf := addClientFlags(a, cmd, false)
	ns := addNamespaceFlag(cmd, "delete the records from")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		keys := make([]digest.Digest, len(args))
		for i, s := range args {
			k, err := parseDigest("step key", s)
			if err != nil {
				return err
			}
			keys[i] = k
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		var missing, failed []error
		for _, k := range keys {
			err := c.DeleteStepIn(ctx, *ns, k)
			switch {
			case err == nil:
				if !cf.json {
					fmt.Fprintf(a.stdout, "deleted %s\n", k)
				}
			case errors.Is(err, client.ErrNotFound):
				missing = append(missing, fmt.Errorf("step %s not found on %s", k, cf.server))
			default:
				failed = append(failed, err)
			}
		}
		if len(failed) > 0 {
			return cf.fail(errors.Join(failed...))
		}
		if len(missing) > 0 {
			return &exitError{code: exitNotFound, err: errors.Join(missing...)}
		}
		return nil
	}
	return cmd
}
