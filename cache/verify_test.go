package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/stepkey"
)

// openCounter counts Opens per key, and the bytes asked for.
type openCounter struct {
	backend.Store
	mu    sync.Mutex
	opens map[string]int
}

func (o *openCounter) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	o.mu.Lock()
	o.opens[key]++
	o.mu.Unlock()
	return o.Store.Open(ctx, key, off, n)
}

// Verify finds a flipped byte in a record, a damaged pack footer and a
// missing pack; it quarantines exactly the chunks that are bad, reports
// the damaged layers and the steps that name them, reads each pack once,
// and a push of the damaged layers heals them.
func TestVerify(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	c.chunks.SetPackTarget(256 << 10) // several packs per layer
	var datas [][]byte
	var infos []LayerInfo
	for i := range 3 {
		d := genData(uint64(300+i), 2<<20)
		datas = append(datas, d)
		infos = append(infos, push(t, c, d))
	}
	step, err := c.RecordStep(ctx, "", stepkey.Step{Instruction: "RUN make"}, &LayerRef{Digest: infos[0].Digest}, nil)
	if err != nil {
		t.Fatal(err)
	}

	clean, err := c.Verify(ctx, VerifyOptions{})
	if err != nil || len(clean.Quarantine) != 0 || len(clean.Problems) != 0 || clean.Chunks == 0 || clean.Packs == 0 {
		t.Fatalf("Verify of a healthy store: %+v, %v", clean, err)
	}

	// Layer 0: one payload byte flipped. Layer 1: its first chunk's pack
	// loses its footer (the records are fine). Layer 2: a pack deleted.
	refs0, _ := c.Chunks(ctx, infos[0].Digest)
	_, bad := chunkLocation(t, c, refs0[2].ID)
	rewritePack(t, store, bad, func(b []byte) []byte { return flip(b, int(bad.Off+bad.Stored-3)) })
	refs1, _ := c.Chunks(ctx, infos[1].Digest)
	_, footless := chunkLocation(t, c, refs1[0].ID)
	rewritePack(t, store, footless, func(b []byte) []byte { return flip(b, len(b)-2) })
	refs2, _ := c.Chunks(ctx, infos[2].Digest)
	_, gone := chunkLocation(t, c, refs2[len(refs2)-1].ID)
	if gone.Pack == bad.Pack || gone.Pack == footless.Pack || bad.Pack == footless.Pack {
		t.Fatal("the damaged chunks share packs: the test needs them apart")
	}
	rewritePack(t, store, gone, func([]byte) []byte { return nil })

	counter := &openCounter{Store: store, opens: map[string]int{}}
	c.store = counter
	c.chunks.SetBackend(counter)
	var progress int
	rep, err := c.Verify(ctx, VerifyOptions{Progress: func(VerifyReport) { progress++ }})
	if err != nil {
		t.Fatal(err)
	}
	if int64(progress) != rep.Packs {
		t.Errorf("progress called %d times for %d packs", progress, rep.Packs)
	}
	for key, n := range counter.opens {
		if n > 1 && !strings.Contains(key, footless.Pack.String()) {
			t.Errorf("pack %s read %d times", key, n)
		}
	}
	if !slices.Contains(rep.Quarantine, refs0[2].ID) || !slices.Contains(rep.Quarantine, refs2[len(refs2)-1].ID) {
		t.Errorf("quarantined %v; want the flipped chunk and the lost one", rep.Quarantine)
	}
	for _, r := range refs1 {
		if slices.Contains(rep.Quarantine, r.ID) {
			t.Errorf("chunk %s of the pack with the damaged footer was quarantined; its record is fine", r.ID)
		}
	}
	if !slices.Contains(rep.Damaged, infos[0].Digest) || !slices.Contains(rep.Damaged, infos[2].Digest) || slices.Contains(rep.Damaged, infos[1].Digest) {
		t.Errorf("damaged layers %v; want layers 0 and 2", rep.Damaged)
	}
	if !slices.Contains(rep.Steps, step.Key) {
		t.Errorf("damaged steps %v; want %s", rep.Steps, step.Key)
	}
	if !slices.ContainsFunc(rep.Problems, func(p string) bool { return strings.Contains(p, footless.Pack.String()) }) {
		t.Errorf("problems %q; want the damaged footer", rep.Problems)
	}
	if rep.Newly != int64(len(rep.Quarantine)) {
		t.Errorf("newly quarantined %d of %d", rep.Newly, len(rep.Quarantine))
	}
	for i, want := range []bool{true, false, true} {
		st, err := c.Stat(ctx, infos[i].Digest)
		if err != nil || st.Damaged() != want {
			t.Errorf("layer %d: Stat %+v, %v; damaged want %v", i, st, err, want)
		}
	}
	if st, err := c.Stats(ctx); err != nil || st.Quarantined != int64(len(rep.Quarantine)) {
		t.Errorf("Stats: %+v, %v; want %d quarantined", st, err, len(rep.Quarantine))
	}
	// A damaged layer is absent to every existence check: a registry
	// HEAD, and a push with the expected digest that would otherwise
	// skip the upload.
	if _, err := c.statBlob("r", infos[0].Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("statBlob of a damaged layer: %v, want ErrNotFound", err)
	}

	// Healing: push the damaged layers again.
	for _, i := range []int{0, 2} {
		if _, err := c.Push(ctx, bytes.NewReader(datas[i]), PushOptions{Size: -1, Expected: infos[i].Digest}); err != nil {
			t.Fatal(err)
		}
		if got := pull(t, c, infos[i].Digest, 0, -1); !bytes.Equal(got, datas[i]) {
			t.Errorf("layer %d after healing reads back other bytes", i)
		}
	}
	after, err := c.Verify(ctx, VerifyOptions{})
	if err != nil || len(after.Quarantine) != 0 || len(after.Damaged) != 0 {
		t.Errorf("Verify after healing: %+v, %v", after, err)
	}
	if rec, err := c.LookupStep(ctx, "", stepkey.Step{Instruction: "RUN make"}); err != nil || rec.Key != step.Key {
		t.Errorf("the step of a healed layer: %+v, %v", rec, err)
	}
	checkRefcounts(t, c)
}

// A rate-limited Verify stops when its context ends.
func TestVerifyCancel(t *testing.T) {
	c, _ := newCache(t)
	push(t, c, genData(7, 1<<20))
	ctx, cancel := context.WithCancel(t.Context())
	_, err := c.Verify(ctx, VerifyOptions{Rate: 1, Progress: func(VerifyReport) { cancel() }})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Verify after cancel: %v, want context.Canceled", err)
	}
}
