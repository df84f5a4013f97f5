package main

import (
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
)

func newRmCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rm DIGEST...",
		Short: "Delete layers from the server",
		Long: `Rm deletes the named layers. Steps that produced them become misses; chunks
no other layer uses are freed. It goes on past a layer that does not exist
and then exits with status 3.`,
		Example: `  cairn rm sha256:...`,
		Args:    cobra.MinimumNArgs(1),
	}
	cf := addClientFlags(a, cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ds := make([]digest.Digest, len(args))
		for i, s := range args {
			d, err := parseDigest("layer", s)
			if err != nil {
				return err
			}
			ds[i] = d
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		type result struct {
			Digest  digest.Digest `json:"digest"`
			Deleted bool          `json:"deleted"`
			Error   string        `json:"error,omitempty"`
		}
		var results []result
		var missing, failed []error
		for _, d := range ds {
			err := c.Delete(ctx, d)
			r := result{Digest: d, Deleted: err == nil}
			switch {
			case err == nil:
				if !cf.json {
					fmt.Fprintf(a.stdout, "deleted %s\n", d)
				}
			case errors.Is(err, client.ErrNotFound):
				r.Error = "not found"
				missing = append(missing, fmt.Errorf("layer %s not found on %s", d, cf.server))
			default:
				r.Error = err.Error()
				failed = append(failed, err)
			}
			results = append(results, r)
			if ctx.Err() != nil {
				break
			}
		}
		if cf.json {
			if err := cf.printJSON(results); err != nil {
				return err
			}
		}
		if len(failed) > 0 {
			for _, err := range missing {
				cf.note("cairn: %v", err)
			}
			return cf.fail(errors.Join(failed...))
		}
		if len(missing) > 0 {
			return &exitError{code: exitNotFound, err: errors.Join(missing...)}
		}
		return nil
	}
	return cmd
}
