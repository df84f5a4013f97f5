package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cairnbuild/cairn/client"
)

func newPullCmd(a *app) *cobra.Command {
	var (
		out           string
		offset, limit int64
		chunkCache    string
	)
	cmd := &cobra.Command{
		Use:   "pull DIGEST -o FILE|-",
		Short: "Download a layer to a file or stdout",
		Long: `Pull downloads the layer DIGEST to FILE, or to stdout with "-o -". A
whole layer is verified against its digest; FILE appears only once the
download is complete and verified. With --chunk-cache DIR, chunks already
in DIR are not downloaded again and the ones fetched are kept there.

While the server sends nothing, pull says so on stderr every 30s, and it
gives up after --idle-timeout without data (a consumer of stdout that
stops reading does not count).`,
		Example: `  cairn pull sha256:... -o layer.tar
  cairn pull sha256:... -o - | tar -t
  cairn pull sha256:... -o layer.tar --chunk-cache ~/.cache/cairn/chunks`,
		Args: cobra.ExactArgs(1),
	}
	cf := addClientFlags(a, cmd, true)
	cf.addIdleFlag(cmd)
	fs := cmd.Flags()
	fs.StringVarP(&out, "output", "o", "", `where to write the layer: a file, or "-" for stdout (required)`)
	fs.Int64Var(&offset, "offset", 0, "first byte to read")
	fs.Int64Var(&limit, "length", 0, "bytes to read (0: to the end)")
	fs.StringVar(&chunkCache, "chunk-cache", "", "local directory of chunks to reuse and fill")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		d, err := parseDigest("layer", args[0])
		if err != nil {
			return err
		}
		if out == "" {
			return errors.New(`say where the layer goes: -o FILE, or -o - for stdout`)
		}
		if out == "-" && cf.json {
			return errors.New("--json prints on stdout, which -o - uses for the layer: pull to a file")
		}
		if offset < 0 || limit < 0 {
			return fmt.Errorf("--offset %d, --length %d: must be at least 0", offset, limit)
		}
		var w io.Writer
		var commit func() error
		abort := func() {}
		if out == "-" {
			if f, ok := a.stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				return errors.New("not writing a layer to a terminal: use -o FILE, or pipe stdout")
			}
			w, commit = a.stdout, func() error { return nil }
		} else {
			// Write next to the target and rename, so that FILE is
			// never a partial layer.
			tmp, err := createTempOutput(out)
			if err != nil {
				return err
			}
			w = tmp
			abort = func() { closeQuietly(tmp); _ = os.Remove(tmp.Name()) }
			commit = func() error {
				if err := tmp.Sync(); err != nil {
					return err
				}
				if err := tmp.Close(); err != nil {
					return err
				}
				return os.Rename(tmp.Name(), out)
			}
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			abort()
			return err
		}
		defer done()

		total := int64(-1)
		sctx, scancel := cf.statContext(ctx)
		info, err := c.Stat(sctx, d)
		scancel()
		if err == nil {
			total = max(info.Size-offset, 0)
			if limit > 0 {
				total = min(total, limit)
			}
		}
		progress, finish := cf.progress(total, "pull")
		res, err := c.Pull(ctx, d, w, client.PullOptions{
			Offset:        offset,
			Length:        limit,
			ChunkCacheDir: chunkCache,
			Progress:      progress,
			Idle:          cf.idleOptions(),
		})
		finish()
		if err == nil {
			err = commit()
		}
		if err != nil {
			abort()
			return cf.layerFail(d, err)
		}
		if cf.json {
			return cf.printJSON(res)
		}
		if out != "-" || chunkCache != "" {
			msg := fmt.Sprintf("pulled %s: %s", d, humanBytes(res.BytesWritten))
			if chunkCache != "" {
				msg += fmt.Sprintf(", %s from %s, %s fetched (%s)", plural(res.ChunksCached, "chunk"), chunkCache, plural(res.ChunksFetched, "chunk"), humanBytes(res.BytesFetched))
			}
			cf.note("%s", msg)
		}
		return nil
	}
	return cmd
}
