package server

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"

	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/metrics"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/stepkey"
)

// The cache implements every interface the server declares, and the step
// metrics decorator is a StepCache: checked here, not in production code,
// so that the server's code needs the cache only for its value types.
var (
	_ Store       = (*cache.Cache)(nil)
	_ LayerStore  = (*cache.Cache)(nil)
	_ ChunkStore  = (*cache.Cache)(nil)
	_ StepCache   = (*cache.Cache)(nil)
	_ StatsSource = (*cache.Cache)(nil)
	_ ImageStore  = (*cache.Cache)(nil)
	_ StepCache   = metrics.StepCache(nil)
)

func TestGetStats(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	empty, err := e.layers.GetStats(ctx, &cairnv1.GetStatsRequest{})
	if err != nil {
		t.Fatalf("GetStats of an empty server: %v", err)
	}
	if empty.GetLayerCount() != 0 || empty.GetChunkCount() != 0 || empty.GetStepCount() != 0 ||
		empty.GetLogicalSizeBytes() != 0 || empty.GetStoredSizeBytes() != 0 {
		t.Errorf("GetStats of an empty server = %v, want all zero", empty)
	}

	// Two layers that share their first MiB, and a step.
	shared := randomData(1, 1<<20)
	a := append(append([]byte{}, shared...), randomData(2, 300<<10)...)
	b := append(append([]byte{}, shared...), randomData(3, 500<<10)...)
	e.pushSimple(t, a)
	e.pushSimple(t, b)
	if _, err := e.steps.RecordStep(ctx, &cairnv1.RecordStepRequest{
		Step:  &cairnv1.Step{Instruction: "RUN make"},
		Layer: &cairnv1.LayerDescriptor{Digest: digest.FromBytes(a).String()},
	}); err != nil {
		t.Fatal(err)
	}

	got, err := e.layers.GetStats(ctx, &cairnv1.GetStatsRequest{})
	if err != nil {
		t.Fatalf("GetStats: %v", err)
	}
	want, err := e.cache.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetLayerCount() != 2 || got.GetStepCount() != 1 || got.GetLogicalSizeBytes() != int64(len(a)+len(b)) {
		t.Errorf("GetStats = %v, want 2 layers, 1 step, %d logical bytes", got, len(a)+len(b))
	}
	if got.GetLayerCount() != want.Layers || got.GetChunkCount() != want.Chunks || got.GetStepCount() != want.Steps ||
		got.GetLogicalSizeBytes() != want.LogicalBytes || got.GetStoredSizeBytes() != want.StoredBytes {
		t.Errorf("GetStats = %v, want the cache's %+v", got, want)
	}
	// The shared MiB is stored once: stored bytes are well below logical
	// ones even though random data does not compress.
	if s, l := got.GetStoredSizeBytes(), got.GetLogicalSizeBytes(); s <= 0 || s > l-(1<<20)/2 {
		t.Errorf("stored %d bytes of %d logical; want the shared MiB stored once", s, l)
	}
}

// blockingStats is a StatsSource whose walk waits for release, and that
// counts the walks in progress.
type blockingStats struct {
	*cache.Cache
	entered        chan struct{}
	release        chan struct{}
	inFlight, most atomic.Int32
}

func (b *blockingStats) Stats(ctx context.Context) (cache.Stats, error) {
	n := b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	for {
		m := b.most.Load()
		if n <= m || b.most.CompareAndSwap(m, n) {
			break
		}
	}
	b.entered <- struct{}{}
	<-b.release
	return b.Cache.Stats(ctx)
}

// TestGetStatsWalksOneAtATime checks that a second GetStats waits for the
// walk in progress instead of starting another.
func TestGetStatsWalksOneAtATime(t *testing.T) {
	bs := &blockingStats{entered: make(chan struct{}, 2), release: make(chan struct{})}
	e := newEnvWith(t, Options{}, func(c *cache.Cache) Store { bs.Cache = c; return bs })
	ctx := context.Background()

	first := make(chan error, 1)
	go func() {
		_, err := e.layers.GetStats(ctx, &cairnv1.GetStatsRequest{})
		first <- err
	}()
	<-bs.entered // the first walk is running

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err := e.layers.GetStats(short, &cairnv1.GetStatsRequest{})
	wantStatus(t, err, codes.DeadlineExceeded, "", "")

	close(bs.release)
	if err := <-first; err != nil {
		t.Fatalf("the first GetStats: %v", err)
	}
	if _, err := e.layers.GetStats(ctx, &cairnv1.GetStatsRequest{}); err != nil {
		t.Fatalf("GetStats after the first walk: %v", err)
	}
	if m := bs.most.Load(); m != 1 {
		t.Errorf("%d walks at once, want 1", m)
	}
}

// TestStepMetricsDecorateTheStepCache checks that the server counts
// lookups through the metrics.Steps decorator only: a StepCache that counts
// its own calls sees each lookup once, and the counters agree with it.
func TestStepMetricsDecorateTheStepCache(t *testing.T) {
	var lookups atomic.Int32
	e := newEnvWith(t, Options{}, func(c *cache.Cache) Store {
		return &countingSteps{Cache: c, n: &lookups}
	})
	ctx := context.Background()
	step := &cairnv1.Step{Instruction: "RUN true"}
	if _, err := e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Step: step}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.steps.LookupChain(ctx, &cairnv1.LookupChainRequest{Steps: []*cairnv1.Step{step, step}}); err != nil {
		t.Fatal(err)
	}
	if n := lookups.Load(); n != 2 {
		t.Errorf("the store saw %d lookups, want 2", n)
	}
	if got := metricValue(t, e.reg, "cairn_step_lookups_total", map[string]string{"result": "miss"}); got != 2 {
		t.Errorf("misses = %v, want 2 (one per call)", got)
	}
	if got := metricValue(t, e.reg, "cairn_step_lookups_total", map[string]string{"result": "hit"}); got != 0 {
		t.Errorf("hits = %v, want 0", got)
	}
}

type countingSteps struct {
	*cache.Cache
	n *atomic.Int32
}

func (c *countingSteps) LookupStepIn(ctx context.Context, nss []string, parent digest.Digest, s stepkey.Step) (cache.StepRecord, error) {
	c.n.Add(1)
	return c.Cache.LookupStepIn(ctx, nss, parent, s)
}

func (c *countingSteps) LookupChainIn(ctx context.Context, nss []string, base digest.Digest, steps []stepkey.Step) ([]cache.StepRecord, error) {
	c.n.Add(1)
	return c.Cache.LookupChainIn(ctx, nss, base, steps)
}
