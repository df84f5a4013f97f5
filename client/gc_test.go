package client

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// gcFake answers CollectGarbage with resp and records the requests.
type gcFake struct {
	cairnv1.UnimplementedLayerServiceServer
	mu   sync.Mutex
	reqs []*cairnv1.CollectGarbageRequest
	resp *cairnv1.CollectGarbageResponse
}

func (f *gcFake) CollectGarbage(_ context.Context, req *cairnv1.CollectGarbageRequest) (*cairnv1.CollectGarbageResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	return f.resp, nil
}

func (f *gcFake) last() *cairnv1.CollectGarbageRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs[len(f.reqs)-1]
}

// TestGCOptionsAndReport: GCOptions map to the request (zero values unset,
// so the server's defaults apply; NoUntaggedMaxAge an explicit zero), and
// the response's fields reach GCReport.
func TestGCOptionsAndReport(t *testing.T) {
	f := &gcFake{resp: &cairnv1.CollectGarbageResponse{StaleStepCount: 1, UnreachedLayerCount: 2, UntaggedManifestCount: 3,
		DeletedLayerCount: 4, StoredBytes: 5, EvictedLayerCount: 6, EvictedManifestCount: 7, EvictedBytes: 8,
		CompactPackCount: 9, CompactedPackCount: 10, CompactReadBytes: 11, CompactWrittenBytes: 12}}
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	cairnv1.RegisterLayerServiceServer(s, f)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	c, err := Dial(context.Background(), "passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()

	for _, tc := range []struct {
		opts GCOptions
		want *cairnv1.CollectGarbageRequest
	}{
		{GCOptions{}, &cairnv1.CollectGarbageRequest{}},
		{GCOptions{UntaggedMaxAge: time.Hour, MaxSize: 10 << 30, KeepTags: "main|v.*"},
			&cairnv1.CollectGarbageRequest{UntaggedMaxAge: durationpb.New(time.Hour), MaxSize: 10 << 30, KeepTags: "main|v.*"}},
		{GCOptions{NoUntaggedMaxAge: true}, &cairnv1.CollectGarbageRequest{UntaggedMaxAge: durationpb.New(0)}},
		{GCOptions{CompactAge: 6 * time.Hour}, &cairnv1.CollectGarbageRequest{CompactAge: durationpb.New(6 * time.Hour)}},
		{GCOptions{NoCompact: true}, &cairnv1.CollectGarbageRequest{CompactAge: durationpb.New(0)}},
	} {
		rep, err := c.GC(ctx, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.last(); !proto.Equal(got, tc.want) {
			t.Errorf("GC(%+v): sent %v, want %v", tc.opts, got, tc.want)
		}
		want := GCReport{StaleSteps: 1, UnreachedLayers: 2, UntaggedManifests: 3, DeletedLayers: 4,
			StoredBytes: 5, EvictedLayers: 6, EvictedManifests: 7, EvictedBytes: 8,
			CompactPacks: 9, CompactedPacks: 10, CompactRead: 11, CompactWritten: 12}
		if rep.StaleSteps != want.StaleSteps || rep.UnreachedLayers != want.UnreachedLayers || rep.UntaggedManifests != want.UntaggedManifests ||
			rep.DeletedLayers != want.DeletedLayers || rep.StoredBytes != want.StoredBytes || rep.EvictedLayers != want.EvictedLayers ||
			rep.EvictedManifests != want.EvictedManifests || rep.EvictedBytes != want.EvictedBytes ||
			rep.CompactPacks != want.CompactPacks || rep.CompactedPacks != want.CompactedPacks ||
			rep.CompactRead != want.CompactRead || rep.CompactWritten != want.CompactWritten {
			t.Errorf("GC report: got %+v, want %+v", rep, want)
		}
	}
}
