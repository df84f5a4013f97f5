package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// fakeServer is an in-memory cairn server with the API's semantics and
// none of its storage, so the client's logic can be tested alone. It
// records the traffic the tests assert on. Safe for concurrent use.
type fakeServer struct {
	cairnv1.UnimplementedLayerServiceServer
	cairnv1.UnimplementedCacheServiceServer
	cairnv1.UnimplementedRegistryServiceServer

	// discard keeps chunk names but not their bytes, for tests that
	// push more than memory should hold; commits are then not verified.
	discard bool

	mu         sync.Mutex
	chunks     map[string][]byte
	layers     map[string][]*cairnv1.ChunkRef
	sizes      map[string]int64
	steps      map[string]*cairnv1.StepRecord
	putBytes   int64 // chunk bytes received by PutChunks
	getChunks  int   // chunks sent by GetChunks
	findCalls  int
	commits    int // CommitLayer calls
	maxFindReq int // most digests in one FindMissingChunks
	statsCalls int
	statsErr   error // GetStats fails with it if set
	// listCalls and recipeCalls count ListLayers and GetLayerChunks.
	listCalls, recipeCalls int

	// images are the registry front's tags, in repository and tag order;
	// imagePageSizes records the page_size of each ListImages call.
	images         []*cairnv1.Image
	imagePageSizes []int32
}

func newFakeServer() *fakeServer {
	return &fakeServer{
		chunks: map[string][]byte{},
		layers: map[string][]*cairnv1.ChunkRef{},
		sizes:  map[string]int64{},
		steps:  map[string]*cairnv1.StepRecord{},
	}
}

// startFake serves f over bufconn and returns a Client on it.
func startFake(t *testing.T, f *fakeServer) *Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	cairnv1.RegisterLayerServiceServer(s, f)
	cairnv1.RegisterCacheServiceServer(s, f)
	cairnv1.RegisterRegistryServiceServer(s, f)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	c, err := Dial(context.Background(), "passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func cairnErr(c codes.Code, reason, format string, args ...any) error {
	s, _ := status.New(c, fmt.Sprintf(format, args...)).WithDetails(&errdetails.ErrorInfo{Domain: cairnv1.ErrorDomain, Reason: reason})
	return s.Err()
}

func (f *fakeServer) layer(d string) (*cairnv1.Layer, error) {
	refs, ok := f.layers[d]
	if !ok {
		return nil, cairnErr(codes.NotFound, cairnv1.ReasonNotFound, "layer %s not found", d)
	}
	return &cairnv1.Layer{Digest: d, SizeBytes: f.sizes[d], ChunkCount: int64(len(refs)), MediaType: "application/vnd.oci.image.layer.v1.tar"}, nil
}

func (f *fakeServer) content(d string) []byte {
	var b []byte
	for _, r := range f.layers[d] {
		b = append(b, f.chunks[r.GetDigest()]...)
	}
	return b
}

func (f *fakeServer) FindMissingChunks(_ context.Context, req *cairnv1.FindMissingChunksRequest) (*cairnv1.FindMissingChunksResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.findCalls++
	f.maxFindReq = max(f.maxFindReq, len(req.GetDigests()))
	resp := &cairnv1.FindMissingChunksResponse{}
	for _, d := range req.GetDigests() {
		if _, ok := f.chunks[d]; !ok {
			resp.MissingDigests = append(resp.MissingDigests, d)
		}
	}
	return resp, nil
}

func (f *fakeServer) PutChunks(s cairnv1.LayerService_PutChunksServer) error {
	var resp cairnv1.PutChunksResponse
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&resp)
		}
		if err != nil {
			return err
		}
		if got := ChunkDigest(req.GetData()).String(); got != req.GetDigest() {
			return cairnErr(codes.InvalidArgument, cairnv1.ReasonDigestMismatch, "chunk %s: digest mismatch", req.GetDigest())
		}
		f.mu.Lock()
		if f.discard {
			f.chunks[req.GetDigest()] = nil
		} else {
			f.chunks[req.GetDigest()] = bytes.Clone(req.GetData())
		}
		f.putBytes += int64(len(req.GetData()))
		f.mu.Unlock()
		resp.ChunkCount++
		resp.ReceivedBytes += int64(len(req.GetData()))
	}
}

func (f *fakeServer) CommitLayer(_ context.Context, req *cairnv1.CommitLayerRequest) (*cairnv1.CommitLayerResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commits++
	h := sha256.New()
	var size int64
	for _, r := range req.GetChunks() {
		data, ok := f.chunks[r.GetDigest()]
		if !ok {
			return nil, cairnErr(codes.FailedPrecondition, cairnv1.ReasonFailedPrecondition, "chunk %s is not stored", r.GetDigest())
		}
		h.Write(data)
		size += r.GetSizeBytes()
	}
	if got := digest.NewDigest(digest.SHA256, h).String(); !f.discard && got != req.GetDigest() {
		return nil, cairnErr(codes.InvalidArgument, cairnv1.ReasonDigestMismatch, "layer digest mismatch: chunks hash to %s", got)
	}
	f.layers[req.GetDigest()] = req.GetChunks()
	f.sizes[req.GetDigest()] = size
	l, _ := f.layer(req.GetDigest())
	return &cairnv1.CommitLayerResponse{Layer: l}, nil
}

func (f *fakeServer) StatLayer(_ context.Context, req *cairnv1.StatLayerRequest) (*cairnv1.StatLayerResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, err := f.layer(req.GetDigest())
	if err != nil {
		return nil, err
	}
	return &cairnv1.StatLayerResponse{Layer: l}, nil
}

func (f *fakeServer) ListLayers(_ context.Context, req *cairnv1.ListLayersRequest) (*cairnv1.ListLayersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listCalls++
	resp := &cairnv1.ListLayersResponse{}
	for d := range f.layers {
		l, _ := f.layer(d)
		resp.Layers = append(resp.Layers, l)
	}
	return resp, nil
}

func (f *fakeServer) DeleteLayer(_ context.Context, req *cairnv1.DeleteLayerRequest) (*cairnv1.DeleteLayerResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.layer(req.GetDigest()); err != nil {
		return nil, err
	}
	delete(f.layers, req.GetDigest())
	return &cairnv1.DeleteLayerResponse{}, nil
}

func (f *fakeServer) PullLayer(req *cairnv1.PullLayerRequest, s cairnv1.LayerService_PullLayerServer) error {
	f.mu.Lock()
	l, err := f.layer(req.GetDigest())
	data := f.content(req.GetDigest())
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if req.GetOffset() > int64(len(data)) {
		return cairnErr(codes.OutOfRange, cairnv1.ReasonOutOfRange, "offset %d past the end", req.GetOffset())
	}
	data = data[req.GetOffset():]
	if n := req.GetLength(); n > 0 && n < int64(len(data)) {
		data = data[:n]
	}
	if err := s.Send(&cairnv1.PullLayerResponse{Layer: l}); err != nil {
		return err
	}
	for len(data) > 0 {
		n := min(len(data), cairnv1.MaxDataMessageBytes)
		if err := s.Send(&cairnv1.PullLayerResponse{Data: data[:n]}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func (f *fakeServer) GetLayerChunks(_ context.Context, req *cairnv1.GetLayerChunksRequest) (*cairnv1.GetLayerChunksResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recipeCalls++
	l, err := f.layer(req.GetDigest())
	if err != nil {
		return nil, err
	}
	return &cairnv1.GetLayerChunksResponse{Layer: l, Chunks: f.layers[req.GetDigest()]}, nil
}

// GetStats adds up the fake's contents; a chunk's stored size is half its
// size, as if it compressed 2:1.
func (f *fakeServer) GetStats(context.Context, *cairnv1.GetStatsRequest) (*cairnv1.GetStatsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statsCalls++
	if f.statsErr != nil {
		return nil, f.statsErr
	}
	resp := &cairnv1.GetStatsResponse{
		LayerCount: int64(len(f.layers)),
		ChunkCount: int64(len(f.chunks)),
		StepCount:  int64(len(f.steps)),
	}
	for d := range f.layers {
		resp.LogicalSizeBytes += f.sizes[d]
	}
	for _, data := range f.chunks {
		resp.StoredSizeBytes += int64(len(data)) / 2
	}
	// The fake compacts nothing: every chunk is in the ingest tier.
	resp.IngestStoredSizeBytes, resp.IngestChunkCount = resp.StoredSizeBytes, resp.ChunkCount
	repos, manifests := map[string]bool{}, map[string]bool{}
	for _, img := range f.images {
		repos[img.GetRepository()] = true
		manifests[img.GetRepository()+"@"+img.GetDigest()] = true
	}
	resp.RepositoryCount, resp.TagCount, resp.ManifestCount = int64(len(repos)), int64(len(f.images)), int64(len(manifests))
	return resp, nil
}

// ListImages pages f.images as the server does: whole repositories, until
// a page holds page_size images (default 100). The token is the index of
// the page's first image.
func (f *fakeServer) ListImages(_ context.Context, req *cairnv1.ListImagesRequest) (*cairnv1.ListImagesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.imagePageSizes = append(f.imagePageSizes, req.GetPageSize())
	start := 0
	if t := req.GetPageToken(); t != "" {
		if _, err := fmt.Sscanf(t, "at-%d", &start); err != nil || start <= 0 || start >= len(f.images) {
			return nil, cairnErr(codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "bad page token %q", t)
		}
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 100
	}
	resp := &cairnv1.ListImagesResponse{}
	i := start
	for i < len(f.images) && len(resp.Images) < size {
		repo := f.images[i].GetRepository()
		for ; i < len(f.images) && f.images[i].GetRepository() == repo; i++ {
			resp.Images = append(resp.Images, f.images[i])
		}
	}
	if i < len(f.images) {
		resp.NextPageToken = fmt.Sprintf("at-%d", i)
	}
	return resp, nil
}

// DeleteImage removes a tag, or every tag of the repository naming a
// digest.
func (f *fakeServer) DeleteImage(_ context.Context, req *cairnv1.DeleteImageRequest) (*cairnv1.DeleteImageResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.GetRepository() == "" || req.GetReference() == "" {
		return nil, cairnErr(codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "empty repository or reference")
	}
	kept := f.images[:0:0]
	for _, img := range f.images {
		if img.GetRepository() != req.GetRepository() || (img.GetTag() != req.GetReference() && img.GetDigest() != req.GetReference()) {
			kept = append(kept, img)
		}
	}
	if len(kept) == len(f.images) {
		return nil, cairnErr(codes.NotFound, cairnv1.ReasonNotFound, "%s: %s not found", req.GetRepository(), req.GetReference())
	}
	f.images = kept
	return &cairnv1.DeleteImageResponse{}, nil
}

func (f *fakeServer) GetChunks(req *cairnv1.GetChunksRequest, s cairnv1.LayerService_GetChunksServer) error {
	for _, d := range req.GetDigests() {
		f.mu.Lock()
		data, ok := f.chunks[d]
		f.getChunks++
		f.mu.Unlock()
		if !ok {
			return cairnErr(codes.NotFound, cairnv1.ReasonNotFound, "chunk %s not found", d)
		}
		if err := s.Send(&cairnv1.GetChunksResponse{Digest: d, Data: data}); err != nil {
			return err
		}
	}
	return nil
}

// stepKey is the fake's step key: not the real encoding, only unique.
func stepKey(parent string, s *cairnv1.Step) string {
	return digest.FromString(fmt.Sprintf("%q %q %q %q %q", parent, s.GetInstruction(), s.GetInputsDigest(), s.GetPlatform(), s.GetBuildArgs())).String()
}

func (f *fakeServer) RecordStep(_ context.Context, req *cairnv1.RecordStepRequest) (*cairnv1.RecordStepResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := stepKey(req.GetParent(), req.GetStep())
	rec := &cairnv1.StepRecord{Key: key, Parent: req.GetParent(), Step: req.GetStep(), Layer: req.GetLayer(), Config: req.GetConfig()}
	if l := req.GetLayer(); l != nil {
		if _, ok := f.layers[l.GetDigest()]; !ok {
			return nil, cairnErr(codes.FailedPrecondition, cairnv1.ReasonFailedPrecondition, "layer %s is not committed", l.GetDigest())
		}
		rec.NextParent = digest.FromString(req.GetParent() + " " + l.GetDigest()).String()
	} else {
		rec.NextParent = digest.FromString(req.GetParent() + " " + key).String()
	}
	f.steps[key] = rec
	return &cairnv1.RecordStepResponse{Record: rec}, nil
}

func (f *fakeServer) LookupStep(_ context.Context, req *cairnv1.LookupStepRequest) (*cairnv1.LookupStepResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := stepKey(req.GetParent(), req.GetStep())
	rec, ok := f.steps[key]
	if !ok {
		return &cairnv1.LookupStepResponse{Key: key}, nil
	}
	rec.HitCount++
	return &cairnv1.LookupStepResponse{Hit: true, Record: rec, Key: key}, nil
}

func (f *fakeServer) LookupChain(_ context.Context, req *cairnv1.LookupChainRequest) (*cairnv1.LookupChainResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &cairnv1.LookupChainResponse{NextParent: req.GetBase()}
	for _, s := range req.GetSteps() {
		rec, ok := f.steps[stepKey(resp.NextParent, s)]
		if !ok {
			break
		}
		resp.Hits = append(resp.Hits, rec)
		resp.NextParent = rec.GetNextParent()
	}
	return resp, nil
}
