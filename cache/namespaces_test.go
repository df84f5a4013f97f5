package cache

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// Poisoning: a record a pull request's namespace holds is never a hit for
// a lookup of main alone, alone or in a chain; a lookup that lists the pull
// request's namespace first takes its record, and main's otherwise.
func TestNamespacesKeepPullRequestsApart(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	evil := push(t, c, genData(301, 64<<10))
	good := push(t, c, genData(302, 64<<10))
	step := stepkey.Step{Instruction: "RUN make release"}
	next := stepkey.Step{Instruction: "RUN make package"}

	if _, err := c.RecordStepIn(ctx, "pr/1234", "", step, &LayerRef{Digest: evil.Digest}, nil); err != nil {
		t.Fatal(err)
	}
	if rec, err := c.LookupStepIn(ctx, []string{"main"}, "", step); !errors.Is(err, ErrNotFound) {
		t.Fatalf("main's lookup hit the pull request's record: %+v, %v", rec.Layer, err)
	}
	if rec, err := c.LookupStep(ctx, "", step); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the default namespace's lookup hit the pull request's record: %+v, %v", rec.Layer, err)
	}
	if chain, err := c.LookupChainIn(ctx, []string{"main"}, "", []stepkey.Step{step}); err != nil || len(chain) != 0 {
		t.Fatalf("main's chain: %d records, %v", len(chain), err)
	}
	rec, err := c.LookupStepIn(ctx, []string{"pr/1234", "main"}, "", step)
	if err != nil || rec.Layer.Digest != evil.Digest || rec.Namespace != "pr/1234" {
		t.Fatalf("the pull request's own lookup: %+v in %q, %v", rec.Layer, rec.Namespace, err)
	}

	// main records its own; each lookup takes the first namespace that
	// holds one, and a chain goes on from whichever record it took.
	if _, err := c.RecordStepIn(ctx, "main", "", step, &LayerRef{Digest: good.Digest}, nil); err != nil {
		t.Fatal(err)
	}
	mainRec, err := c.LookupStepIn(ctx, []string{"main"}, "", step)
	if err != nil || mainRec.Layer.Digest != good.Digest {
		t.Fatalf("main's lookup: %+v, %v", mainRec.Layer, err)
	}
	if _, err := c.RecordStepIn(ctx, "main", mainRec.Next, next, nil, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // the second and third from the memo
		chain, err := c.LookupChainIn(ctx, []string{"main", "pr/1234"}, "", []stepkey.Step{step, next})
		if err != nil || len(chain) != 2 || chain[0].Layer.Digest != good.Digest || chain[1].Namespace != "main" {
			t.Fatalf("round %d: main-first chain: %d records, %v", i, len(chain), err)
		}
		chain, err = c.LookupChainIn(ctx, []string{"pr/1234", "main"}, "", []stepkey.Step{step, next})
		if err != nil || len(chain) != 1 || chain[0].Layer.Digest != evil.Digest {
			// The pull request's record of the first step leads to
			// another parent, which main holds nothing under.
			t.Fatalf("round %d: pull-request-first chain: %d records, %v", i, len(chain), err)
		}
	}

	// Reindex restores every namespace's records where they were.
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	if rec, err := c.LookupStepIn(ctx, []string{"main"}, "", step); err != nil || rec.Layer.Digest != good.Digest {
		t.Fatalf("after a reindex, main: %+v, %v", rec.Layer, err)
	}
	if rec, err := c.LookupStepIn(ctx, []string{"pr/1234"}, "", step); err != nil || rec.Layer.Digest != evil.Digest {
		t.Fatalf("after a reindex, the pull request: %+v, %v", rec.Layer, err)
	}
	recs, _, err := c.ListSteps(ctx, "", 0, "")
	if err != nil || len(recs) != 3 {
		t.Fatalf("list: %d records, %v; want 3", len(recs), err)
	}
	// Deleting main's record leaves the pull request's.
	if err := c.DeleteStepIn(ctx, "main", mainRec.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LookupStepIn(ctx, []string{"main"}, "", step); !errors.Is(err, ErrNotFound) {
		t.Fatalf("main's deleted record: %v", err)
	}
	if _, err := c.LookupStepIn(ctx, []string{"pr/1234"}, "", step); err != nil {
		t.Fatalf("the pull request's record after main's delete: %v", err)
	}
}

// Immutable records under concurrent writes: of many writers recording the
// same step in one namespace with different layers, one wins, the others
// are refused and counted, and the winner is what lookups return, before
// and after a reindex.
func TestStepRecordsAreImmutableUnderConcurrentWrites(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	const writers = 12
	layers := make([]digest.Digest, writers)
	for i := range layers {
		layers[i] = push(t, c, genData(uint64(400+i), 16<<10)).Digest
	}
	step := stepkey.Step{Instruction: "RUN go build ./..."}
	// Between its check and its writes, a writer yields for a while: any
	// other writer of the key that got in meanwhile would show here.
	var inside, most atomic.Int32
	c.stepWrite = func() {
		n := inside.Add(1)
		if n > most.Load() {
			most.Store(n)
		}
		for range 200 {
			runtime.Gosched()
		}
		inside.Add(-1)
	}
	var wg sync.WaitGroup
	won := make([]bool, writers)
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			_, err := c.RecordStepIn(ctx, "main", "", step, &LayerRef{Digest: layers[i]}, nil)
			won[i], errs[i] = err == nil, err
		})
	}
	wg.Wait()
	winner := -1
	for i := range writers {
		switch {
		case won[i] && winner >= 0:
			t.Fatalf("writers %d and %d both recorded the step", winner, i)
		case won[i]:
			winner = i
		case !errors.Is(errs[i], ErrStepDiverged):
			t.Fatalf("writer %d: %v, want ErrStepDiverged", i, errs[i])
		}
	}
	if winner < 0 {
		t.Fatal("no writer recorded the step")
	}
	if most.Load() != 1 {
		t.Errorf("%d writers of one record were between their check and their writes at once", most.Load())
	}
	check := func(when string) {
		rec, err := c.LookupStepIn(ctx, []string{"main"}, "", step)
		if err != nil || rec.Layer.Digest != layers[winner] {
			t.Fatalf("%s: lookup: %+v, %v; want the winner's layer", when, rec.Layer, err)
		}
	}
	check("after the race")
	rec, _ := c.LookupStepIn(ctx, []string{"main"}, "", step)
	if rec.Divergences != writers-1 || c.Divergences() != writers-1 {
		t.Errorf("divergences: record %d, cache %d; want %d", rec.Divergences, c.Divergences(), writers-1)
	}
	// The same record again is no divergence: it returns the record.
	if again, err := c.RecordStepIn(ctx, "main", "", step, &LayerRef{Digest: layers[winner]}, nil); err != nil || again.Key != rec.Key {
		t.Fatalf("recording the same record again: %v", err)
	}
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	check("after a reindex")
}

func TestNamespaceArguments(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	step := stepkey.Step{Instruction: "RUN true"}
	for _, ns := range []string{"Main", "../x", "a//b", "/a", "a/", string(make([]byte, 300))} {
		if _, err := c.RecordStepIn(ctx, ns, "", step, nil, nil); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("record in %q: %v, want ErrInvalidArgument", ns, err)
		}
		if _, err := c.LookupStepIn(ctx, []string{"main", ns}, "", step); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("lookup in %q: %v, want ErrInvalidArgument", ns, err)
		}
	}
	many := make([]string, MaxNamespaces+1)
	for i := range many {
		many[i] = fmt.Sprintf("ns%d", i)
	}
	if _, err := c.LookupChainIn(ctx, many, "", []stepkey.Step{step}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a lookup of %d namespaces: %v, want ErrInvalidArgument", len(many), err)
	}
	if _, err := c.LookupStepIn(ctx, []string{"main", "main"}, "", step); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("a namespace listed twice: %v, want ErrInvalidArgument", err)
	}
}
