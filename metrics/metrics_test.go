package metrics

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache"
)

func TestBackend(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewBackend(reg)
	if err != nil {
		t.Fatal(err)
	}
	s := m.Wrap(mem.New())
	var _ backend.Store = s
	ctx := context.Background()
	data := []byte("hello, chunk")
	if err := s.Put(ctx, "chunks/ab/cd", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "bad//key", bytes.NewReader(data), int64(len(data))); err == nil {
		t.Fatal("bad key accepted")
	}
	rc, err := s.Open(ctx, "chunks/ab/cd", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	if _, err := s.Stat(ctx, "chunks/ab/missing"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("stat of a missing key: %v", err)
	}
	s.List(ctx, "chunks/", func(backend.Info) error { return nil })
	s.Delete(ctx, "chunks/ab/cd")
	m.OnRetry("put")

	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"cairn_backend_requests_total", map[string]string{"op": "put", "result": "ok"}, 1},
		{"cairn_backend_requests_total", map[string]string{"op": "put", "result": "error"}, 1}, // the bad key
		{"cairn_backend_requests_total", map[string]string{"op": "open", "result": "ok"}, 1},
		{"cairn_backend_requests_total", map[string]string{"op": "stat", "result": "not_found"}, 1},
		{"cairn_backend_requests_total", map[string]string{"op": "list", "result": "ok"}, 1},
		{"cairn_backend_requests_total", map[string]string{"op": "delete", "result": "ok"}, 1},
		{"cairn_backend_written_bytes_total", nil, float64(len(data))},
		{"cairn_backend_read_bytes_total", nil, float64(len(data))},
		{"cairn_backend_retries_total", map[string]string{"op": "put"}, 1},
	}
	for _, tt := range tests {
		if got := value(t, reg, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	if n := len(family(t, reg, "cairn_backend_request_duration_seconds").GetMetric()); n != 5 {
		t.Errorf("%d duration series, want one per operation (5)", n)
	}
	if _, err := NewBackend(reg); err == nil {
		t.Error("registering twice with one registry succeeded")
	}
}

func TestResult(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{backend.ErrNotFound, "not_found"},
		{backend.ErrUnavailable, "unavailable"},
		{context.Canceled, "canceled"},
		{errors.New("x"), "error"},
	} {
		if got := result(tt.err); got != tt.want {
			t.Errorf("result(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestCacheCollector(t *testing.T) {
	calls := 0
	fail := false
	stats := func(context.Context) (cache.Stats, error) {
		calls++
		if fail {
			return cache.Stats{}, errors.New("index down")
		}
		return cache.Stats{Layers: 2, Chunks: 10, Steps: 3, LogicalBytes: 4000, StoredBytes: 1000,
			IngestBytes: 700, CompactedBytes: 300, IngestChunks: 6, CompactedChunks: 4}, nil
	}
	c := NewCacheCollector(stats, time.Hour, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	for name, want := range map[string]float64{
		"cairn_layers": 2, "cairn_chunks": 10, "cairn_steps": 3,
		"cairn_logical_bytes": 4000, "cairn_stored_bytes": 1000, "cairn_dedup_ratio": 4,
	} {
		if got := value(t, reg, name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	for _, tc := range []struct {
		name, tier string
		want       float64
	}{
		{"cairn_tier_stored_bytes", "ingest", 700},
		{"cairn_tier_stored_bytes", "compacted", 300},
		{"cairn_tier_chunks", "ingest", 6},
		{"cairn_tier_chunks", "compacted", 4},
	} {
		if got := value(t, reg, tc.name, map[string]string{"tier": tc.tier}); got != tc.want {
			t.Errorf("%s{tier=%q} = %v, want %v", tc.name, tc.tier, got, tc.want)
		}
	}
	if calls != 1 {
		t.Errorf("%d Stats walks for several scrapes within the interval, want 1", calls)
	}

	// A failing walk leaves the gauges out instead of failing the scrape.
	c = NewCacheCollector(stats, time.Nanosecond, nil)
	fail = true
	reg = prometheus.NewRegistry()
	reg.MustRegister(c)
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 0 {
		t.Errorf("after a failed walk: %d families, %v; want none and no error", len(mfs), err)
	}
}

// family returns the gathered metric family name, or nil.
func family(t *testing.T, reg *prometheus.Registry, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

// value returns the counter or gauge value of the series of name with
// exactly labels, or -1 if there is none.
func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
series:
	for _, m := range family(t, reg, name).GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue series
			}
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	return -1
}

// TestGCCollector: each cache.GCStats count is its own counter, read on
// each scrape, and the last end appears only once a run has ended.
func TestGCCollector(t *testing.T) {
	var st cache.GCStats
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewGCCollector(func() cache.GCStats { return st }))
	if got := family(t, reg, "cairn_gc_last_end_timestamp_seconds"); got != nil {
		t.Errorf("before any run: %v, want no last end", got)
	}
	st = cache.GCStats{Runs: 3, Failures: 1, FreedBytes: -200, DeletedBytes: 1000, DeletedPacks: 4, RewrittenPacks: 2, DeletedChunks: 50,
		CompactedPacks: 5, CompactRead: 6 << 20, CompactWritten: 2 << 20,
		LastDuration: 1500 * time.Millisecond, LastEnd: time.Unix(1700000000, 0)}
	for name, want := range map[string]float64{
		"cairn_gc_runs_total": 3, "cairn_gc_failures_total": 1, "cairn_gc_freed_bytes_total": 1000,
		"cairn_gc_packs_deleted_total": 4, "cairn_gc_packs_rewritten_total": 2, "cairn_gc_chunks_deleted_total": 50,
		"cairn_compaction_packs_total": 5, "cairn_compaction_read_bytes_total": 6 << 20, "cairn_compaction_written_bytes_total": 2 << 20,
		"cairn_gc_last_duration_seconds": 1.5, "cairn_gc_last_end_timestamp_seconds": 1700000000,
	} {
		if got := value(t, reg, name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if mf := family(t, reg, "cairn_compaction_read_bytes_total"); mf.GetType() != dto.MetricType_COUNTER {
		t.Errorf("cairn_compaction_read_bytes_total is a %v, want a counter", mf.GetType())
	}
}
