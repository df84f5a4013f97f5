package client_test

import (
	"context"
	"errors"
	"log"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/client"
)

// A builder's step: look it up; on a miss run it, push its layer and
// record it; then continue from the record's Next.
func Example() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "127.0.0.1:7070")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var parent digest.Digest // "" is scratch
	step := client.Step{Instruction: "RUN make", Platform: "linux/amd64"}
	rec, err := c.LookupStep(ctx, parent, step)
	if errors.Is(err, client.ErrMiss) {
		layer, err := os.Open("layer.tar") // what running the step produced
		if err != nil {
			log.Fatal(err)
		}
		defer layer.Close()
		res, err := c.Push(ctx, layer, client.PushOptions{})
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("pushed %s, sent %d of %d bytes", res.Digest, res.BytesSent, res.Size)
		rec, err = c.RecordStep(ctx, parent, step, &client.LayerRef{Digest: res.Digest}, nil)
		if err != nil {
			log.Fatal(err)
		}
	} else if err != nil {
		log.Fatal(err)
	}
	parent = rec.Next // the next step runs on this

	// Fetch the layer, reusing the chunks of earlier pulls.
	out, err := os.Create("layer-copy.tar")
	if err != nil {
		log.Fatal(err)
	}
	defer out.Close()
	if _, err := c.Pull(ctx, rec.Layer.Digest, out, client.PullOptions{ChunkCacheDir: "chunks"}); err != nil {
		log.Fatal(err)
	}
}
