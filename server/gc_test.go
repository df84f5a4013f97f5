package server

import (
	"context"
	"regexp"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// gcSpy is a Store whose GC records the options it gets and returns rep.
type gcSpy struct {
	*cache.Cache
	got []cache.GCOptions
	rep cache.GCReport
}

func (s *gcSpy) GC(_ context.Context, opts cache.GCOptions) (cache.GCReport, error) {
	s.got = append(s.got, opts)
	return s.rep, nil
}

func newGCEnv(t *testing.T, defaults GCDefaults) (*env, *gcSpy) {
	t.Helper()
	spy := &gcSpy{}
	e := newEnvWith(t, Options{GCDefaults: defaults}, func(c *cache.Cache) Store {
		spy.Cache = c
		return spy
	})
	return e, spy
}

// TestCollectGarbageOptions: the request's fields reach cache.GCOptions,
// and what it leaves unset is the server's configured defaults.
func TestCollectGarbageOptions(t *testing.T) {
	keep := regexp.MustCompile(`^(?:main|v.*)$`)
	defaults := GCDefaults{UntaggedMaxAge: 48 * time.Hour, MaxSize: 10 << 30, KeepTags: keep, CompactAge: 6 * time.Hour, CompactPace: 0.25}
	e, spy := newGCEnv(t, defaults)
	ctx := context.Background()

	// Unset: the defaults.
	if _, err := e.layers.CollectGarbage(ctx, &cairnv1.CollectGarbageRequest{}); err != nil {
		t.Fatal(err)
	}
	got := spy.got[len(spy.got)-1]
	if got.UntaggedMaxAge != 48*time.Hour || got.MaxSize != 10<<30 || got.KeepTags != keep {
		t.Errorf("unset fields: got untagged %v, max size %d, keep %v; want the defaults", got.UntaggedMaxAge, got.MaxSize, got.KeepTags)
	}
	if got.CompactAge != 6*time.Hour || got.CompactPace != 0.25 {
		t.Errorf("unset fields: got compact age %v, pace %v; want the defaults 6h, 0.25", got.CompactAge, got.CompactPace)
	}

	// Set: the request's, zero untagged_max_age meaning none, keep_tags
	// anchored.
	if _, err := e.layers.CollectGarbage(ctx, &cairnv1.CollectGarbageRequest{
		UntaggedMaxAge: durationpb.New(0), MaxSize: 1 << 20, KeepTags: "latest|stable",
	}); err != nil {
		t.Fatal(err)
	}
	got = spy.got[len(spy.got)-1]
	if got.UntaggedMaxAge >= 0 || got.MaxSize != 1<<20 || got.KeepTags == nil {
		t.Fatalf("set fields: got untagged %v, max size %d, keep %v", got.UntaggedMaxAge, got.MaxSize, got.KeepTags)
	}
	for tag, want := range map[string]bool{"latest": true, "stable": true, "latest-1": false, "xlatest": false, "main": false} {
		if got.KeepTags.MatchString(tag) != want {
			t.Errorf("keep_tags %q: tag %q matched %v, want %v", "latest|stable", tag, !want, want)
		}
	}
	if _, err := e.layers.CollectGarbage(ctx, &cairnv1.CollectGarbageRequest{UntaggedMaxAge: durationpb.New(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if got = spy.got[len(spy.got)-1]; got.UntaggedMaxAge != time.Hour {
		t.Errorf("untagged_max_age 1h: got %v", got.UntaggedMaxAge)
	}

	// compact_age: set, it overrides the default (the pace stays the
	// server's); zero turns compaction off for the run.
	for _, tc := range []struct {
		age  time.Duration
		want time.Duration
	}{{time.Hour, time.Hour}, {time.Nanosecond, time.Nanosecond}, {0, 0}} {
		if _, err := e.layers.CollectGarbage(ctx, &cairnv1.CollectGarbageRequest{CompactAge: durationpb.New(tc.age)}); err != nil {
			t.Fatal(err)
		}
		if got = spy.got[len(spy.got)-1]; got.CompactAge != tc.want || got.CompactPace != 0.25 {
			t.Errorf("compact_age %v: got age %v, pace %v; want %v, the server's 0.25", tc.age, got.CompactAge, got.CompactPace, tc.want)
		}
	}

	// With no defaults, unset is the cache's defaults.
	e2, spy2 := newGCEnv(t, GCDefaults{})
	if _, err := e2.layers.CollectGarbage(ctx, &cairnv1.CollectGarbageRequest{}); err != nil {
		t.Fatal(err)
	}
	if got = spy2.got[0]; got.UntaggedMaxAge != 0 || got.MaxSize != 0 || got.KeepTags != nil || got.CompactAge != 0 || got.CompactPace != 0 {
		t.Errorf("no defaults: got untagged %v, max size %d, keep %v, compact age %v, pace %v; want zeros (no compaction)",
			got.UntaggedMaxAge, got.MaxSize, got.KeepTags, got.CompactAge, got.CompactPace)
	}
}

// TestCollectGarbageBadFields: each bad field is InvalidArgument naming it,
// and the collector is not called.
func TestCollectGarbageBadFields(t *testing.T) {
	e, spy := newGCEnv(t, GCDefaults{})
	long := make([]byte, maxKeepTags+1)
	for i := range long {
		long[i] = 'a'
	}
	for _, tc := range []struct {
		name  string
		req   *cairnv1.CollectGarbageRequest
		field string
	}{
		{"negative untagged_max_age", &cairnv1.CollectGarbageRequest{UntaggedMaxAge: durationpb.New(-time.Second)}, "untagged_max_age"},
		{"negative max_size", &cairnv1.CollectGarbageRequest{MaxSize: -1}, "max_size"},
		{"keep_tags does not compile", &cairnv1.CollectGarbageRequest{KeepTags: "v(1"}, "keep_tags"},
		{"keep_tags closes the anchor's group", &cairnv1.CollectGarbageRequest{KeepTags: "a)|(b"}, "keep_tags"},
		{"keep_tags too long", &cairnv1.CollectGarbageRequest{KeepTags: string(long)}, "keep_tags"},
		{"negative grace", &cairnv1.CollectGarbageRequest{Grace: durationpb.New(-time.Second)}, "grace"},
		{"negative compact_age", &cairnv1.CollectGarbageRequest{CompactAge: durationpb.New(-time.Second)}, "compact_age"},
		{"compact_age out of range", &cairnv1.CollectGarbageRequest{CompactAge: &durationpb.Duration{Seconds: 1, Nanos: -1}}, "compact_age"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.layers.CollectGarbage(context.Background(), tc.req)
			wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, tc.field)
		})
	}
	if len(spy.got) != 0 {
		t.Errorf("the collector ran %d times on bad requests", len(spy.got))
	}
}

// TestCollectGarbageReport: every report field reaches the response.
func TestCollectGarbageReport(t *testing.T) {
	e, spy := newGCEnv(t, GCDefaults{})
	spy.rep = cache.GCReport{StaleSteps: 1, UnreachedLayers: 2, UntaggedManifests: 3, DeletedLayers: 4,
		StoredBytes: 5, EvictedLayers: 6, EvictedManifests: 7, EvictedBytes: 8, FreedBytes: 9,
		Compact: make([]cache.PackPlan, 10), CompactedPacks: 11, CompactRead: 12, CompactWritten: 13}
	resp, err := e.layers.CollectGarbage(context.Background(), &cairnv1.CollectGarbageRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := []int64{resp.GetStaleStepCount(), resp.GetUnreachedLayerCount(), resp.GetUntaggedManifestCount(), resp.GetDeletedLayerCount(),
		resp.GetStoredBytes(), resp.GetEvictedLayerCount(), resp.GetEvictedManifestCount(), resp.GetEvictedBytes(), resp.GetFreedBytes(),
		resp.GetCompactPackCount(), resp.GetCompactedPackCount(), resp.GetCompactReadBytes(), resp.GetCompactWrittenBytes()}
	for i, n := range got {
		if n != int64(i+1) {
			t.Errorf("field %d of %v: got %d, want %d", i, got, n, i+1)
		}
	}
}

// TestCollectGarbageCompacts: over a real cache, a collection whose
// compact_age the pushed packs are older than compacts them, the response
// counts it, and GetStats moves the chunks from the ingest tier to the
// compacted one; the default (no compaction, GCDefaults' zero value) and
// an explicit zero leave them.
func TestCollectGarbageCompacts(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	e.pushSimple(t, randomData(1, 3<<20))
	e.pushSimple(t, randomData(2, 1<<20))
	stats := func() *cairnv1.GetStatsResponse {
		t.Helper()
		st, err := e.layers.GetStats(ctx, &cairnv1.GetStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		want, err := e.cache.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.GetIngestStoredSizeBytes() != want.IngestBytes || st.GetCompactedStoredSizeBytes() != want.CompactedBytes ||
			st.GetIngestChunkCount() != want.IngestChunks || st.GetCompactedChunkCount() != want.CompactedChunks {
			t.Errorf("GetStats = %v, want the cache's tiers %+v", st, want)
		}
		return st
	}
	before := stats()
	if before.GetChunkCount() == 0 || before.GetIngestChunkCount() != before.GetChunkCount() ||
		before.GetIngestStoredSizeBytes() != before.GetStoredSizeBytes() || before.GetCompactedChunkCount() != 0 {
		t.Fatalf("after pushes: %v; want every chunk and stored byte in the ingest tier", before)
	}

	noGrace := durationpb.New(0)
	for _, req := range []*cairnv1.CollectGarbageRequest{
		{Grace: noGrace, PackGrace: noGrace},                                // the server's default: none
		{Grace: noGrace, PackGrace: noGrace, CompactAge: durationpb.New(0)}, // none for this run
	} {
		resp, err := e.layers.CollectGarbage(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetCompactPackCount() != 0 || resp.GetCompactedPackCount() != 0 || resp.GetCompactWrittenBytes() != 0 {
			t.Errorf("CollectGarbage(%v) compacted: %v", req, resp)
		}
	}

	// Touches are whole seconds: a nanosecond counts a push made in the
	// run's second as older (cache.GC's plan).
	resp, err := e.layers.CollectGarbage(ctx, &cairnv1.CollectGarbageRequest{Grace: noGrace, PackGrace: noGrace,
		CompactAge: durationpb.New(time.Nanosecond)})
	if err != nil {
		t.Fatal(err)
	}
	if n := resp.GetCompactPackCount(); n == 0 || resp.GetCompactedPackCount() != n {
		t.Errorf("compact_age 1ns: %d packs planned, %d compacted; want every pack, all done", n, resp.GetCompactedPackCount())
	}
	if resp.GetCompactReadBytes() != before.GetUniqueSizeBytes() || resp.GetCompactWrittenBytes() <= 0 {
		t.Errorf("compact_age 1ns: read %d bytes (want the %d unique ones), wrote %d",
			resp.GetCompactReadBytes(), before.GetUniqueSizeBytes(), resp.GetCompactWrittenBytes())
	}
	after := stats()
	if after.GetCompactedChunkCount() != before.GetChunkCount() || after.GetIngestChunkCount() != 0 ||
		after.GetIngestStoredSizeBytes() != 0 || after.GetCompactedStoredSizeBytes() != after.GetStoredSizeBytes() {
		t.Errorf("after compaction: %v; want every chunk in the compacted tier", after)
	}
}
