package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/cmd/internal/storage"
)

// reindexConfig is what `cairn reindex` is told: the server's storage
// flags and --log-level.
type reindexConfig struct {
	storage storage.Config
	log     logFlags
}

// newReindexCmd is `cairn reindex`: rebuild the index under --data from the
// blob store alone. The blob store is the source of truth; this is how a
// server whose disk was lost, or a new server on an existing bucket, gets
// its layers and steps back.
func newReindexCmd(a *app) *cobra.Command {
	var cfg reindexConfig
	cmd := &cobra.Command{
		Use:   "reindex",
		Short: "Rebuild the index from the blob store",
		Long: `Rebuild the index under --data from the blob store alone: the packs'
tables, the layer manifests and the step records. Run it with the storage
flags of the server (the same flags and environment twins as cairn serve),
while that server is stopped: the index is locked while a server uses it.

Whatever the index held is replaced. A layer whose manifest names a chunk the
blob store lacks is not restored, nor are the steps that point at it; hit
counts and access times are not in the blob store and start from zero.`,
		Example: `  cairn reindex --data /var/lib/cairn --s3-endpoint s3.example.com --s3-bucket ci-cache`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.storage.Check(); err != nil {
				return err
			}
			if err := cfg.log.check(); err != nil {
				return err
			}
			return runReindex(cmd, a, &cfg)
		},
	}
	cfg.storage.AddFlags(cmd.Flags())
	cfg.log.addFlags(cmd.Flags())
	return cmd
}

func runReindex(cmd *cobra.Command, a *app, cfg *reindexConfig) (err error) {
	ctx := cmd.Context()
	st, err := cfg.storage.Open(ctx, cfg.log.logger(a.stderr), nil)
	if err != nil {
		return fmt.Errorf("%w (is a server using this --data?)", err)
	}
	defer func() {
		if cerr := st.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	start := time.Now()
	if err := st.Cache.Reindex(ctx); err != nil {
		return err
	}
	stats, err := st.Cache.Stats(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "reindexed %s from %s in %v: %d layers, %d chunks, %d steps\n",
		st.IndexDir, st.Blobs, time.Since(start).Round(time.Millisecond), stats.Layers, stats.Chunks, stats.Steps)
	return nil
}
