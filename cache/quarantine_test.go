package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// A finished flight that another session still holds names the copy a
// read has since condemned: a session that needs the chunk must store it
// again, never heal the quarantine onto that same bad copy.
func TestHealNeverOntoTheBadCopy(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	data := genData(42, 64<<10)
	id := chunkid.Sum(data)
	s1 := c.chunks.NewSession(ctx, true)
	defer s1.Close() // holds the finished flight
	if err := s1.Ensure(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if err := s1.Flush(); err != nil {
		t.Fatal(err)
	}
	_, bad := chunkLocation(t, c, id)
	rewritePack(t, store, bad, func(b []byte) []byte { return flip(b, int(bad.Off+bad.Stored-3)) })
	if _, err := c.ReadChunk(ctx, id); !errors.Is(err, ErrDataLoss) || !c.idx.Quarantined(id) {
		t.Fatalf("read of the flipped chunk: %v; quarantined %v", err, c.idx.Quarantined(id))
	}
	s2 := c.chunks.NewSession(ctx, false)
	defer s2.Close()
	if err := s2.Ensure(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if err := s2.Flush(); err != nil {
		t.Fatal(err)
	}
	if k := s2.Known()[id]; k.Pack == bad.Pack && k.Off == bad.Off {
		t.Fatalf("the session took the condemned copy as its own")
	}
	lr := &index.LayerRecord{Digest: digest.FromBytes(data), MediaType: DefaultMediaType, Size: int64(len(data)),
		Recipe: []index.RecipeEntry{{ID: id, Size: int64(len(data))}}, Created: time.Now()}
	if _, err := c.idx.CommitLayer(lr, s2.Known()); err != nil {
		t.Fatal(err)
	}
	if c.idx.Quarantined(id) {
		t.Fatal("still quarantined after a commit that stored the chunk")
	}
	if got, err := c.ReadChunk(ctx, id); err != nil || chunkid.Sum(got) != id {
		t.Fatalf("healed chunk: %v", err)
	}
}

// cutOnce makes the next Open's body fail the way the S3 backend reports
// a connection cut mid-body: ErrUnavailable, wrapping io.ErrUnexpectedEOF.
type cutOnce struct {
	backend.Store
	armed bool
}

type cutReader struct{ io.ReadCloser }

func (cutReader) Read([]byte) (int, error) {
	return 0, fmt.Errorf("s3: read: %w: %w", backend.ErrUnavailable, io.ErrUnexpectedEOF)
}

func (s *cutOnce) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := s.Store.Open(ctx, key, off, n)
	if err == nil && s.armed {
		s.armed = false
		return cutReader{rc}, nil
	}
	return rc, err
}

// A read cut short by the network is not a short pack: nothing is
// quarantined, and the next read succeeds.
func TestTransientShortReadQuarantinesNothing(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	info := push(t, c, genData(43, 256<<10))
	refs, _ := c.Chunks(ctx, info.Digest)
	c.chunks.SetBackend(&cutOnce{Store: store, armed: true})
	if _, err := c.ReadChunk(ctx, refs[0].ID); !errors.Is(err, ErrUnavailable) {
		t.Errorf("cut read: %v, want ErrUnavailable", err)
	}
	if c.idx.Quarantined(refs[0].ID) {
		t.Fatal("a transient backend error quarantined a good chunk")
	}
	if _, err := c.ReadChunk(ctx, refs[0].ID); err != nil {
		t.Errorf("the read after: %v", err)
	}
}

// A Reindex keeps the quarantine of a chunk whose rebuilt entry names the
// same bad copy.
func TestReindexKeepsQuarantine(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	info := push(t, c, genData(44, 256<<10))
	refs, _ := c.Chunks(ctx, info.Digest)
	_, bad := chunkLocation(t, c, refs[0].ID)
	rewritePack(t, store, bad, func(b []byte) []byte { return flip(b, int(bad.Off+bad.Stored-3)) })
	if _, err := c.ReadChunk(ctx, refs[0].ID); !errors.Is(err, ErrDataLoss) {
		t.Fatal(err)
	}
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stat(ctx, info.Digest)
	missing, _ := c.MissingChunks(ctx, []chunkid.ID{refs[0].ID})
	if err != nil || st.DamagedChunks != 1 || len(missing) != 1 {
		t.Errorf("after Reindex: %+v, %v, missing %v; want the layer restored, damaged, its bad chunk asked for", st, err, missing)
	}
}

// A Reindex does not wait for a running Verify (which would queue every
// other call behind it for hours): the Verify takes the lock one step at a
// time, and stops when a rebuild overtakes it.
func TestReindexDuringVerify(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	info := push(t, c, genData(45, 1<<20))
	started := make(chan struct{})
	vctx, cancel := context.WithCancel(ctx)
	defer cancel()
	verified := make(chan error, 1)
	go func() {
		var once bool
		_, err := c.Verify(vctx, VerifyOptions{Rate: 1, Progress: func(VerifyReport) {
			if !once {
				once = true
				close(started)
			}
		}})
		verified <- err
	}()
	<-started
	if err := c.Reindex(ctx); err != nil { // the test's deadline bounds it
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-verified; !errors.Is(err, ErrFailedPrecondition) && !errors.Is(err, context.Canceled) {
		t.Errorf("Verify overtaken by a Reindex: %v", err)
	}
}

// A layer named by more step records than one transaction deletes loses
// them all with it, in batches.
func TestDeleteLayerManySteps(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	c.idx.SetMaxTxnChunks(160) // steps go 10 a transaction
	info := push(t, c, genData(46, 4<<10))
	other := push(t, c, genData(47, 4<<10))
	for i := range 35 {
		if _, err := c.RecordStep(ctx, "", stepkey.Step{Instruction: fmt.Sprintf("RUN true %d", i)}, &LayerRef{Digest: info.Digest}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A record replaced (deleted, recorded again) with another layer
	// leaves the first's list.
	if _, err := c.RecordStep(ctx, "", stepkey.Step{Instruction: "RUN true 3"}, &LayerRef{Digest: other.Digest}, nil); !errors.Is(err, ErrStepDiverged) {
		t.Fatalf("a second record with another layer: %v, want ErrStepDiverged", err)
	}
	key, _, _ := stepKey("", stepkey.Step{Instruction: "RUN true 3"})
	if err := c.DeleteStep(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RecordStep(ctx, "", stepkey.Step{Instruction: "RUN true 3"}, &LayerRef{Digest: other.Digest}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	recs, _, err := c.ListSteps(ctx, "", 0, "")
	if err != nil || len(recs) != 1 || recs[0].Layer.Digest != other.Digest {
		t.Errorf("steps after the delete: %d, %v; want the one re-recorded on the other layer", len(recs), err)
	}
	if st, _ := c.Stats(ctx); st.Steps != 1 {
		t.Errorf("Stats: %d steps, want 1", st.Steps)
	}
}
