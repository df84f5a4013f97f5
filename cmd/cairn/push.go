package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/client"
)

// pushOutput is push's --json result.
type pushOutput struct {
	client.PushResult
	Step *client.StepRecord `json:"step,omitempty"`
}

func newPushCmd(a *app) *cobra.Command {
	var (
		expect, mediaType, diffID string
	)
	cmd := &cobra.Command{
		Use:   "push FILE|-",
		Short: "Upload a layer (a tar, or any blob) and print its digest",
		Long: `Push uploads a layer from FILE, or from stdin with "-", and prints its
digest. The layer is chunked here and only the chunks the server lacks are
sent. With --instruction the push also records the step that made the layer
(see "cairn record"), so a later "cairn lookup" with the same step hits.

While the server takes or answers nothing, push says so on stderr every
30s, and it gives up after --idle-timeout without data (a slow stdin does
not count).`,
		Example: `  cairn push layer.tar
  tar -cf - ./rootfs | cairn push -
  cairn push layer.tar --instruction 'RUN make' --parent sha256:... --json`,
		Args: cobra.ExactArgs(1),
	}
	cf := addClientFlags(a, cmd, true)
	cf.addIdleFlag(cmd)
	sf := addStepFlags(cmd)
	ns := addNamespaceFlag(cmd, "record the step in (with --instruction)")
	fs := cmd.Flags()
	fs.StringVar(&expect, "expect", "", "fail unless the layer has this digest (nothing is committed then)")
	fs.StringVar(&mediaType, "media-type", "", "media type to store (default: application/vnd.oci.image.layer.v1.tar)")
	fs.StringVar(&diffID, "diff-id", "", "with --instruction: the uncompressed digest, for a compressed layer")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		expected, err := parseOptionalDigest("--expect", expect)
		if err != nil {
			return err
		}
		diff, err := parseOptionalDigest("--diff-id", diffID)
		if err != nil {
			return err
		}
		if err := checkUTF8("--media-type", mediaType); err != nil {
			return err
		}
		record := sf.instruction != ""
		if !record && (sf.parent != "" || sf.inputs != "" || len(sf.buildArgs) > 0 || diffID != "") {
			return errors.New("--parent, --inputs, --build-arg and --diff-id describe a step: add --instruction to record one")
		}
		parent, err := sf.parentDigest()
		if err != nil {
			return err
		}
		step, err := sf.step()
		if err != nil {
			return err
		}

		var r io.Reader = a.stdin
		size, name := int64(-1), "stdin"
		if args[0] != "-" {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer closeQuietly(f)
			if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
				size = st.Size()
			}
			r, name = f, args[0]
		}

		ctx, c, done, err := cf.connect(cmd.Context())
		if err != nil {
			return err
		}
		defer done()
		progress, finish := cf.progress(size, "push")
		res, err := c.Push(ctx, r, client.PushOptions{
			ExpectedDigest: expected,
			Size:           size,
			MediaType:      mediaType,
			Progress:       progress,
			Idle:           cf.idleOptions(),
		})
		finish()
		if err != nil {
			return cf.fail(fmt.Errorf("%s: %w", name, err))
		}
		out := pushOutput{PushResult: res}
		if record {
			rec, err := c.RecordStepIn(ctx, *ns, parent, step, &client.LayerRef{
				// The media type this push states, not the stored one: a
				// layer keeps the type of whoever stored it first, and a
				// record must not take another namespace's word for it.
				Digest: res.Digest, DiffID: diff, Size: res.Size, MediaType: mediaType,
			}, nil)
			if err != nil {
				return cf.fail(fmt.Errorf("layer %s pushed, but recording the step failed: %w", res.Digest, err))
			}
			out.Step = &rec
		}
		if cf.json {
			return cf.printJSON(out)
		}
		fmt.Fprintln(a.stdout, res.Digest)
		cf.note("pushed %s: %s in %s, sent %s (%s)",
			name, humanBytes(res.Size), plural(res.ChunksTotal, "chunk"), plural(res.ChunksSent, "chunk"), humanBytes(res.BytesSent))
		if out.Step != nil {
			cf.note("recorded step %s; the next step's --parent is %s", out.Step.Key, out.Step.Next)
		}
		return nil
	}
	return cmd
}
