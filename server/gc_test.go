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
	defaults := GCDefaults{UntaggedMaxAge: 48 * time.Hour, MaxSize: 10 << 30, KeepTags: keep}
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

	// With no defaults, unset is the cache's defaults.
	e2, spy2 := newGCEnv(t, GCDefaults{})
	if _, err := e2.layers.CollectGarbage(ctx, &cairnv1.CollectGarbageRequest{}); err != nil {
		t.Fatal(err)
	}
	if got = spy2.got[0]; got.UntaggedMaxAge != 0 || got.MaxSize != 0 || got.KeepTags != nil {
		t.Errorf("no defaults: got untagged %v, max size %d, keep %v; want zeros", got.UntaggedMaxAge, got.MaxSize, got.KeepTags)
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
		StoredBytes: 5, EvictedLayers: 6, EvictedManifests: 7, EvictedBytes: 8, FreedBytes: 9}
	resp, err := e.layers.CollectGarbage(context.Background(), &cairnv1.CollectGarbageRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := []int64{resp.GetStaleStepCount(), resp.GetUnreachedLayerCount(), resp.GetUntaggedManifestCount(), resp.GetDeletedLayerCount(),
		resp.GetStoredBytes(), resp.GetEvictedLayerCount(), resp.GetEvictedManifestCount(), resp.GetEvictedBytes(), resp.GetFreedBytes()}
	for i, n := range got {
		if n != int64(i+1) {
			t.Errorf("field %d of %v: got %d, want %d", i, got, n, i+1)
		}
	}
}
