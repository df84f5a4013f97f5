package cache

import (
	"errors"
	"testing"

	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

func TestSteps(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	base := push(t, c, genData(1, 300<<10))
	layer1 := push(t, c, genData(2, 200<<10))
	layer3 := push(t, c, genData(3, 100<<10))
	steps := []stepkey.Step{
		{Instruction: "RUN apt-get update"},
		{Instruction: "ENV A=1"},
		{Instruction: "COPY . /src", InputsDigest: digest.FromString("ctx")},
		{Instruction: "RUN make"},
	}
	// A step whose layer is not committed is refused.
	missing := digest.FromString("not a layer")
	if _, err := c.RecordStep(ctx, base.Digest, steps[0], &LayerRef{Digest: missing}, nil); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("RecordStep with an uncommitted layer: %v, want ErrFailedPrecondition", err)
	}
	if _, err := c.LookupStep(ctx, base.Digest, steps[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LookupStep after a refused record: %v, want ErrNotFound", err)
	}

	parent := base.Digest
	r1, err := c.RecordStep(ctx, parent, steps[0], &LayerRef{Digest: layer1.Digest}, []byte(`{"Cmd":["sh"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := stepkey.ChainID(parent, layer1.Digest); r1.Next != want {
		t.Errorf("Next = %s, want the chain ID %s", r1.Next, want)
	}
	if r1.Layer.Size != layer1.Size || r1.Layer.DiffID != layer1.Digest || r1.Layer.MediaType != DefaultMediaType {
		t.Errorf("layer ref not completed: %+v", r1.Layer)
	}
	r2, err := c.RecordStep(ctx, r1.Next, steps[1], nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Next == r1.Next || r2.Next == "" {
		t.Errorf("a metadata-only step must still change the parent: %s", r2.Next)
	}
	r3, err := c.RecordStep(ctx, r2.Next, steps[2], &LayerRef{Digest: layer3.Digest}, nil)
	if err != nil {
		t.Fatal(err)
	}

	got, err := c.LookupStep(ctx, parent, stepkey.Step{Instruction: "run   apt-get update"})
	if err != nil {
		t.Fatalf("LookupStep of the unnormalized instruction: %v", err)
	}
	if got.Key != r1.Key || got.Layer.Digest != layer1.Digest || string(got.Config) != `{"Cmd":["sh"]}` || got.Hits != 1 {
		t.Errorf("LookupStep = %+v", got)
	}

	chain, err := c.LookupChain(ctx, base.Digest, steps)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || chain[0].Key != r1.Key || chain[1].Key != r2.Key || chain[2].Key != r3.Key {
		t.Fatalf("LookupChain: %d hits, want the 3 recorded steps", len(chain))
	}
	if chain[0].Hits != 2 {
		t.Errorf("hits of step 1 = %d, want 2", chain[0].Hits)
	}
	// Another base: no hits.
	if chain, err := c.LookupChain(ctx, layer3.Digest, steps); err != nil || len(chain) != 0 {
		t.Errorf("LookupChain from another base: %d hits, %v", len(chain), err)
	}
	// Hits survive a reopen (flushed on Close).
	dir, store := c.idx.Dir(), c.store
	c.Close()
	c = openCache(t, dir, store)
	got, err = c.LookupStep(ctx, parent, steps[0])
	if err != nil || got.Hits != 3 {
		t.Errorf("after reopen: hits %d, %v; want 3", got.Hits, err)
	}

	// Deleting a layer turns the steps that made it into misses, and the
	// chain stops there.
	if err := c.Delete(ctx, layer3.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LookupStep(ctx, r2.Next, steps[2]); !errors.Is(err, ErrNotFound) {
		t.Errorf("step of a deleted layer: %v, want ErrNotFound", err)
	}
	if chain, _ := c.LookupChain(ctx, base.Digest, steps); len(chain) != 2 {
		t.Errorf("chain after delete: %d hits, want 2", len(chain))
	}

	// Bad input.
	for _, tc := range []struct {
		parent digest.Digest
		step   stepkey.Step
		layer  *LayerRef
		config []byte
		reason string
	}{
		{base.Digest, stepkey.Step{Instruction: "FROB x"}, nil, nil, "unknown keyword"},
		{"sha256:xyz", steps[0], nil, nil, "malformed parent"},
		{base.Digest, steps[0], &LayerRef{Digest: "md5:d41d8cd98f00b204e9800998ecf8427e"}, nil, "unknown layer digest algorithm"},
		{base.Digest, steps[0], &LayerRef{Digest: layer1.Digest, Size: 1}, nil, "wrong layer size"},
		{base.Digest, steps[0], nil, make([]byte, MaxConfigSize+1), "config too large"},
	} {
		if _, err := c.RecordStep(ctx, tc.parent, tc.step, tc.layer, tc.config); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", tc.reason, err)
		}
	}
	st, err := c.Stats(ctx)
	if err != nil || st.Steps != 2 {
		t.Errorf("Stats: %+v, %v; want 2 steps (the deleted layer's went with it)", st, err)
	}
}

// Lookups answered from the step memo never outlive the layer or the
// record they answer with: after a Delete returns, the step misses; after
// a RecordStep returns, lookups see the new record; and the hits the memo
// counts add up with those the index holds.
func TestStepMemoFollowsDeletesAndRecords(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	step := stepkey.Step{Instruction: "RUN make"}
	for round := range 3 {
		l1 := push(t, c, genData(uint64(700+2*round), 100<<10))
		l2 := push(t, c, genData(uint64(701+2*round), 100<<10))
		if _, err := c.RecordStep(ctx, "", step, &LayerRef{Digest: l1.Digest}, nil); err != nil {
			t.Fatal(err)
		}
		var hits uint64
		for range 3 { // the second and third come from the memo
			rec, err := c.LookupStep(ctx, "", step)
			if err != nil || rec.Layer.Digest != l1.Digest {
				t.Fatalf("round %d: lookup: %+v, %v", round, rec.Layer, err)
			}
			if rec.Hits <= hits {
				t.Errorf("round %d: hits %d after %d", round, rec.Hits, hits)
			}
			hits = rec.Hits
		}
		if chain, err := c.LookupChain(ctx, "", []stepkey.Step{step}); err != nil || len(chain) != 1 || chain[0].Hits != hits+1 {
			t.Fatalf("round %d: chain: %d records, %v (hits %d, want %d)", round, len(chain), err, chain[0].Hits, hits+1)
		}
		// A new record for the key (the old one deleted: records are
		// immutable): seen at once.
		if _, err := c.RecordStep(ctx, "", step, &LayerRef{Digest: l2.Digest}, nil); !errors.Is(err, ErrStepDiverged) {
			t.Fatalf("round %d: a record over another: %v, want ErrStepDiverged", round, err)
		}
		if rec, err := c.LookupStep(ctx, "", step); err != nil || rec.Layer.Digest != l1.Digest || rec.Divergences == 0 {
			t.Fatalf("round %d: after a refused record: %+v (%d divergences), %v; want layer %s", round, rec.Layer, rec.Divergences, err, l1.Digest)
		}
		key, _, _ := stepKey("", step)
		if err := c.DeleteStep(ctx, key); err != nil {
			t.Fatal(err)
		}
		if _, err := c.RecordStep(ctx, "", step, &LayerRef{Digest: l2.Digest}, nil); err != nil {
			t.Fatal(err)
		}
		if rec, err := c.LookupStep(ctx, "", step); err != nil || rec.Layer.Digest != l2.Digest {
			t.Fatalf("round %d: after RecordStep: %+v, %v; want layer %s", round, rec.Layer, err, l2.Digest)
		}
		if _, err := c.LookupStep(ctx, "", step); err != nil { // from the memo again
			t.Fatal(err)
		}
		// Its layer deleted: a miss at once, alone and in a chain.
		if err := c.Delete(ctx, l2.Digest); err != nil {
			t.Fatal(err)
		}
		if rec, err := c.LookupStep(ctx, "", step); !errors.Is(err, ErrNotFound) {
			t.Fatalf("round %d: step of a deleted layer: %+v, %v; want ErrNotFound", round, rec.Layer, err)
		}
		if chain, err := c.LookupChain(ctx, "", []stepkey.Step{step}); err != nil || len(chain) != 0 {
			t.Fatalf("round %d: chain of a deleted layer: %d records, %v", round, len(chain), err)
		}
	}
}
