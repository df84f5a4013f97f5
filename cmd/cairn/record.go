package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
)

// maxConfigFile bounds --config; the server takes at most 64 KiB.
const maxConfigFile = 64 << 10

func newRecordCmd(a *app) *cobra.Command {
	var layer, diffID, config string
	cmd := &cobra.Command{
		Use:   "record --instruction I [--parent P] [--layer DIGEST]",
		Short: "Record that a build step ran and what it produced",
		Long: `Record stores a step in the cache: the step (--parent, --instruction,
--inputs, --platform, --build-arg) and its result, the layer it made
(--layer, pushed before) or none for metadata-only steps like ENV. It
prints the step's record; its "next" is the --parent of the following
step. "cairn push --instruction ..." pushes and records in one go.`,
		Example: `  cairn record --instruction 'ENV A=1' --parent sha256:...
  cairn record --instruction 'RUN make' --parent sha256:... --layer sha256:...`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(a, cmd, false)
	sf := addStepFlags(cmd)
	ns := addNamespaceFlag(cmd, "record the step in")
	fs := cmd.Flags()
	fs.StringVar(&layer, "layer", "", "digest of the layer the step made (pushed already); empty: no layer")
	fs.StringVar(&diffID, "diff-id", "", "the layer's uncompressed digest, if the layer is compressed")
	fs.StringVar(&config, "config", "", "file with the step's config fragment (opaque to cairn, at most 64 KiB)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if sf.instruction == "" {
			return errors.New("say which step: --instruction 'RUN ...'")
		}
		parent, err := sf.parentDigest()
		if err != nil {
			return err
		}
		step, err := sf.step()
		if err != nil {
			return err
		}
		ld, err := parseOptionalDigest("--layer", layer)
		if err != nil {
			return err
		}
		diff, err := parseOptionalDigest("--diff-id", diffID)
		if err != nil {
			return err
		}
		if ld == "" && diff != "" {
			return errors.New("--diff-id without --layer")
		}
		var cfg []byte
		if config != "" {
			if st, err := os.Stat(config); err == nil && st.Size() > maxConfigFile {
				return fmt.Errorf("--config %s: %d bytes, the limit is %d", config, st.Size(), maxConfigFile)
			}
			if cfg, err = os.ReadFile(config); err != nil {
				return err
			}
		}
		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		var ref *client.LayerRef
		if ld != "" {
			info, err := c.Stat(ctx, ld)
			if errors.Is(err, client.ErrNotFound) {
				return cf.fail(fmt.Errorf("layer %s is not on the server: push it first (%w)", ld, err))
			}
			if err != nil {
				return cf.fail(err)
			}
			ref = &client.LayerRef{Digest: ld, DiffID: diff, Size: info.Size, MediaType: info.MediaType}
		}
		rec, err := c.RecordStepIn(ctx, *ns, parent, step, ref, cfg)
		if err != nil {
			return cf.fail(err)
		}
		if cf.json {
			return cf.printJSON(rec)
		}
		return printStepRecord(a.stdout, rec)
	}
	return cmd
}
