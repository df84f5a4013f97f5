package load

import (
	"context"
	"errors"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/client"
)

// ClientTarget drives a cairn server through the Go client: Push and Pull
// as builders do them (client-side chunking, whole-layer pulls verified
// against the digest), step chains from scratch recorded step by step and
// looked up in one call.
func ClientTarget(c *client.Client) Target { return clientTarget{c} }

type clientTarget struct{ c *client.Client }

func (t clientTarget) Push(ctx context.Context, r io.Reader, size int64) (string, error) {
	res, err := t.c.Push(ctx, r, client.PushOptions{Size: size})
	if err != nil {
		return "", err
	}
	return res.Digest.String(), nil
}

func (t clientTarget) Pull(ctx context.Context, id string, w io.Writer) (int64, error) {
	res, err := t.c.Pull(ctx, digest.Digest(id), w, client.PullOptions{})
	return res.BytesWritten, err
}

func (t clientTarget) Record(ctx context.Context, chain []string, id string) error {
	parent := digest.Digest("")
	for _, instr := range chain {
		rec, err := t.c.RecordStep(ctx, parent, client.Step{Instruction: instr}, &client.LayerRef{Digest: digest.Digest(id)}, nil)
		if err != nil {
			return err
		}
		parent = rec.Next
	}
	return nil
}

// Lookup asks with LookupStep for one step and with LookupChain (one round
// trip) for more.
func (t clientTarget) Lookup(ctx context.Context, chain []string) (int, error) {
	if len(chain) == 1 {
		_, err := t.c.LookupStep(ctx, "", client.Step{Instruction: chain[0]})
		if errors.Is(err, client.ErrMiss) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		return 1, nil
	}
	steps := make([]client.Step, len(chain))
	for i, instr := range chain {
		steps[i] = client.Step{Instruction: instr}
	}
	hits, err := t.c.LookupChain(ctx, "", steps)
	return len(hits), err
}
