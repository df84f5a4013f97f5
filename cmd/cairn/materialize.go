package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/cmd/internal/storage"
)

// materializeConfig is what `cairn materialize` is told.
type materializeConfig struct {
	storage storage.Config
	log     logFlags
	encoder string
	all     bool
	dryRun  bool
}

// newMaterializeCmd is `cairn materialize`: store the compressed bytes of
// blobs kept as content plus an encoder, so that a cairn whose encoder
// writes other bytes (a new Go release) can still serve them.
func newMaterializeCmd(a *app) *cobra.Command {
	var cfg materializeConfig
	cmd := &cobra.Command{
		Use:   "materialize [DIGEST...]",
		Short: "Store the compressed bytes of blobs kept as content plus an encoder",
		Long: `cairn stores a gzip or zstd blob as its uncompressed content plus the
encoder that rebuilds its exact bytes. An encoder's output can change between
releases (Go 1.27 replaces compress/flate): a cairn whose encoder no longer
reproduces its pinned vector refuses to rebuild such blobs. Materialize
stores their compressed bytes as chunks of their own, verified against their
digests, so that any cairn serves them; the content stays stored too.

Run it with the cairn release that stored the blobs, before an upgrade:
--encoder go-gzip materializes every blob rebuilt by Go's compress/gzip (the
encoder a Go upgrade changes), --all every rebuilt blob, DIGEST... the ones
named. Without any of them it takes the blobs this build can no longer
rebuild, which works for those still in the rebuilt-blob cache. Like
reindex, it runs on --data while the server is stopped.`,
		Example: `  cairn materialize --data /var/lib/cairn --encoder go-gzip --dry-run
  cairn materialize --data /var/lib/cairn --encoder go-gzip`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cfg.storage.Check(); err != nil {
				return err
			}
			if err := cfg.log.check(); err != nil {
				return err
			}
			if cfg.all && (cfg.encoder != "" || len(args) > 0) {
				return errors.New("--all takes no --encoder and no digests")
			}
			for _, s := range args {
				if err := cache.ParseLayerDigest(digest.Digest(s)); err != nil {
					return fmt.Errorf("%q: %w", s, err)
				}
			}
			return runMaterialize(cmd, a, &cfg, args)
		},
	}
	f := cmd.Flags()
	cfg.storage.AddFlags(f)
	cfg.storage.AddCompressedFlags(f)
	cfg.log.addFlags(f)
	f.StringVar(&cfg.encoder, "encoder", "", "materialize every blob rebuilt by this encoder (go-gzip, pgzip, klauspost-gzip, klauspost-zstd; a prefix of encoder/level)")
	f.BoolVar(&cfg.all, "all", false, "materialize every blob stored as content plus an encoder")
	f.BoolVar(&cfg.dryRun, "dry-run", false, "list the blobs, change nothing")
	return cmd
}

func runMaterialize(cmd *cobra.Command, a *app, cfg *materializeConfig, args []string) (err error) {
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
	blobs, err := st.Cache.RebuiltBlobs(ctx)
	if err != nil {
		return err
	}
	named := map[digest.Digest]bool{}
	for _, s := range args {
		named[digest.Digest(s)] = true
	}
	var picked []cache.RebuiltBlob
	for _, b := range blobs {
		switch {
		case len(named) > 0:
			if !named[b.Digest] {
				continue
			}
			delete(named, b.Digest)
		case cfg.all:
		case cfg.encoder != "":
			if !strings.HasPrefix(b.Encoder, cfg.encoder) {
				continue
			}
		default:
			if b.Usable {
				continue
			}
		}
		picked = append(picked, b)
	}
	for d := range named {
		return fmt.Errorf("%s is not stored as content plus an encoder (or not stored)", d)
	}
	failed := 0
	for _, b := range picked {
		if cfg.dryRun {
			state := "rebuildable here"
			if !b.Usable {
				state = "NOT rebuildable here: " + b.Err
			}
			fmt.Fprintf(a.stdout, "%s\t%d\t%s\t%s\n", b.Digest, b.Size, b.Encoder, state)
			continue
		}
		if _, err := st.Cache.Materialize(ctx, b.Digest); err != nil {
			failed++
			fmt.Fprintf(a.stderr, "cairn: %s: %v\n", b.Digest, err)
			continue
		}
		fmt.Fprintf(a.stdout, "materialized %s (%d bytes, was %s)\n", b.Digest, b.Size, b.Encoder)
	}
	if cfg.dryRun {
		fmt.Fprintf(a.stdout, "%d of %d rebuilt blobs selected\n", len(picked), len(blobs))
		return nil
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d blobs not materialized", failed, len(picked))
	}
	fmt.Fprintf(a.stdout, "materialized %d of %d rebuilt blobs\n", len(picked), len(blobs))
	return nil
}
