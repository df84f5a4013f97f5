package server

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"

	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

func TestPushPullRoundTrip(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	for _, n := range []int{0, 1, 3<<20 + 12345} {
		data := randomData(uint64(n), n)
		d := digest.FromBytes(data)
		l := e.pushSimple(t, data)
		if l.GetDigest() != d.String() || l.GetSizeBytes() != int64(n) {
			t.Fatalf("push of %d bytes: got layer %s/%d, want %s/%d", n, l.GetDigest(), l.GetSizeBytes(), d, n)
		}
		if l.GetMediaType() != cache.DefaultMediaType {
			t.Errorf("media type %q, want the default %q", l.GetMediaType(), cache.DefaultMediaType)
		}
		st, err := e.layers.StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: d.String()})
		if err != nil || st.GetLayer().GetSizeBytes() != int64(n) {
			t.Fatalf("StatLayer: %v, %v", st, err)
		}

		ranges := []struct {
			name           string
			offset, length int64
		}{
			{"whole", 0, 0},
			{"from the middle", int64(n / 2), 0},
			{"a window", int64(n / 3), int64(n / 4)},
			{"length past the end", int64(n / 2), int64(n)},
			{"offset at the end", int64(n), 0},
		}
		for _, r := range ranges {
			layer, got, msgs, err := e.pull(ctx, &cairnv1.PullLayerRequest{Digest: d.String(), Offset: r.offset, Length: r.length})
			if err != nil {
				t.Fatalf("%d bytes, %s: pull: %v", n, r.name, err)
			}
			end := int64(n)
			if r.length > 0 {
				end = min(end, r.offset+r.length)
			}
			if !bytes.Equal(got, data[r.offset:end]) {
				t.Fatalf("%d bytes, %s: got %d bytes, want data[%d:%d]", n, r.name, len(got), r.offset, end)
			}
			if layer.GetDigest() != d.String() {
				t.Fatalf("%d bytes, %s: first message's layer %v", n, r.name, layer)
			}
			if wantMsgs := max(1, (len(got)+cairnv1.MaxDataMessageBytes-1)/cairnv1.MaxDataMessageBytes); msgs != wantMsgs {
				t.Errorf("%d bytes, %s: %d messages, want %d", n, r.name, msgs, wantMsgs)
			}
		}
		_, _, _, err = e.pull(ctx, &cairnv1.PullLayerRequest{Digest: d.String(), Offset: int64(n) + 1})
		wantStatus(t, err, codes.OutOfRange, cairnv1.ReasonOutOfRange, "")
	}
}

func TestPushUnknownSizeAndDigest(t *testing.T) {
	e := newEnv(t, Options{})
	data := randomData(7, 700<<10)
	l, err := e.push(context.Background(), &cairnv1.PushLayerHeader{MediaType: "application/vnd.oci.image.layer.v1.tar+zstd"}, data, 100<<10)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l.GetDigest(), digest.FromBytes(data).String(); got != want {
		t.Errorf("computed digest %s, want %s", got, want)
	}
	if l.GetMediaType() != "application/vnd.oci.image.layer.v1.tar+zstd" {
		t.Errorf("media type %q", l.GetMediaType())
	}
}

func TestPushBadInput(t *testing.T) {
	e := newEnv(t, Options{})
	data := randomData(3, 300<<10)
	good := digest.FromBytes(data).String()
	size := int64(len(data))
	short := size - 1
	negative := int64(-5)
	other := digest.FromString("something else").String()
	tests := []struct {
		name   string
		header *cairnv1.PushLayerHeader
		data   []byte
		code   codes.Code
		reason string
		field  string
	}{
		{"digest mismatch", &cairnv1.PushLayerHeader{ExpectedDigest: other, SizeBytes: &size}, data, codes.InvalidArgument, cairnv1.ReasonDigestMismatch, ""},
		{"unknown algorithm", &cairnv1.PushLayerHeader{ExpectedDigest: "md5:0123456789abcdef0123456789abcdef"}, data, codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "header.expected_digest"},
		{"malformed digest", &cairnv1.PushLayerHeader{ExpectedDigest: "sha256:nothex"}, data, codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "header.expected_digest"},
		{"stream longer than declared", &cairnv1.PushLayerHeader{ExpectedDigest: good, SizeBytes: &short}, data, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, ""},
		{"truncated stream", &cairnv1.PushLayerHeader{ExpectedDigest: good, SizeBytes: &size}, data[:len(data)/2], codes.InvalidArgument, cairnv1.ReasonInvalidArgument, ""},
		{"negative size", &cairnv1.PushLayerHeader{SizeBytes: &negative}, data, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "header.size_bytes"},
		{"bad media type", &cairnv1.PushLayerHeader{MediaType: "text plain\n"}, data, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "header.media_type"},
		{"no header", nil, data, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.push(context.Background(), tt.header, tt.data, 64<<10)
			wantStatus(t, err, tt.code, tt.reason, tt.field)
			// Nothing was committed, under either digest.
			for _, d := range []string{good, other} {
				_, err := e.layers.StatLayer(context.Background(), &cairnv1.StatLayerRequest{Digest: d})
				wantStatus(t, err, codes.NotFound, cairnv1.ReasonNotFound, "")
			}
		})
	}

	t.Run("empty stream", func(t *testing.T) {
		stream, err := e.layers.PushLayer(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		_, err = stream.CloseAndRecv()
		wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "")
	})
	t.Run("second header", func(t *testing.T) {
		stream, err := e.layers.PushLayer(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		h := &cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{}}}
		for _, m := range []*cairnv1.PushLayerRequest{h, {Content: &cairnv1.PushLayerRequest_Data{Data: data[:10]}}, h} {
			if err := stream.Send(m); err != nil {
				break
			}
		}
		_, err = stream.CloseAndRecv()
		wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "header")
	})
}

func TestBadDigests(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	for _, d := range []string{"", "sha256:xyz", "md5:0123456789abcdef0123456789abcdef", "sha256:" + string(bytes.Repeat([]byte("A"), 64)), "../../etc/passwd"} {
		_, err := e.layers.StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: d})
		wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "digest")
		_, err = e.layers.DeleteLayer(ctx, &cairnv1.DeleteLayerRequest{Digest: d})
		wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "digest")
		_, _, _, err = e.pull(ctx, &cairnv1.PullLayerRequest{Digest: d})
		wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "digest")
		_, err = e.layers.FindMissingChunks(ctx, &cairnv1.FindMissingChunksRequest{Digests: []string{cache.ChunkDigest(nil).String(), d}})
		wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "digests[1]")
	}
	_, _, _, err := e.pull(ctx, &cairnv1.PullLayerRequest{Digest: digest.FromString("x").String(), Offset: -1})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "offset")
}

// chunkUp splits data into fixed-size chunks (any split is a valid recipe).
func chunkUp(data []byte, size int) ([][]byte, []*cairnv1.ChunkRef) {
	var chunks [][]byte
	var refs []*cairnv1.ChunkRef
	for len(data) > 0 {
		n := min(size, len(data))
		chunks = append(chunks, data[:n])
		refs = append(refs, &cairnv1.ChunkRef{Digest: cache.ChunkDigest(data[:n]).String(), SizeBytes: int64(n)})
		data = data[n:]
	}
	return chunks, refs
}

func (e *env) putChunks(ctx context.Context, chunks [][]byte, refs []*cairnv1.ChunkRef) (*cairnv1.PutChunksResponse, error) {
	stream, err := e.layers.PutChunks(ctx)
	if err != nil {
		return nil, err
	}
	for i, c := range chunks {
		if err := stream.Send(&cairnv1.PutChunksRequest{Digest: refs[i].GetDigest(), Data: c}); err != nil {
			if err == io.EOF {
				break
			}
			return nil, err
		}
	}
	return stream.CloseAndRecv()
}

func TestClientSideChunking(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	data := randomData(11, 1<<20+777)
	d := digest.FromBytes(data).String()
	chunks, refs := chunkUp(data, 200<<10)
	ids := make([]string, len(refs))
	for i, r := range refs {
		ids[i] = r.GetDigest()
	}

	missing, err := e.layers.FindMissingChunks(ctx, &cairnv1.FindMissingChunksRequest{Digests: ids})
	if err != nil || len(missing.GetMissingDigests()) != len(ids) {
		t.Fatalf("FindMissingChunks before upload: %v, %v; want all %d missing", missing, err, len(ids))
	}
	// A commit before the chunks are there names a missing one.
	_, err = e.layers.CommitLayer(ctx, &cairnv1.CommitLayerRequest{Digest: d, Chunks: refs})
	wantStatus(t, err, codes.FailedPrecondition, cairnv1.ReasonFailedPrecondition, "")

	// Upload all but the last; then the last alone.
	resp, err := e.putChunks(ctx, chunks[:len(chunks)-1], refs)
	if err != nil || resp.GetChunkCount() != int64(len(chunks)-1) {
		t.Fatalf("PutChunks: %v, %v", resp, err)
	}
	missing, err = e.layers.FindMissingChunks(ctx, &cairnv1.FindMissingChunksRequest{Digests: ids})
	if err != nil || len(missing.GetMissingDigests()) != 1 || missing.GetMissingDigests()[0] != ids[len(ids)-1] {
		t.Fatalf("FindMissingChunks after partial upload: %v, %v; want only the last", missing, err)
	}
	if _, err := e.putChunks(ctx, chunks[len(chunks)-1:], refs[len(refs)-1:]); err != nil {
		t.Fatal(err)
	}

	bogus := []struct {
		name   string
		digest string
		refs   []*cairnv1.ChunkRef
		code   codes.Code
		reason string
		field  string
	}{
		{"chunks out of order", d, append([]*cairnv1.ChunkRef{refs[1], refs[0]}, refs[2:]...), codes.InvalidArgument, cairnv1.ReasonDigestMismatch, ""},
		{"a chunk left out", d, refs[1:], codes.InvalidArgument, cairnv1.ReasonDigestMismatch, ""},
		{"wrong chunk size", d, append([]*cairnv1.ChunkRef{{Digest: refs[0].GetDigest(), SizeBytes: 5}}, refs[1:]...), codes.InvalidArgument, "", ""},
		{"zero chunk size", d, append([]*cairnv1.ChunkRef{{Digest: refs[0].GetDigest()}}, refs[1:]...), codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "chunks[0].size_bytes"},
		{"malformed chunk digest", d, append([]*cairnv1.ChunkRef{{Digest: "sha256:zz", SizeBytes: 1}}, refs[1:]...), codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "chunks[0].digest"},
		{"unknown chunk", d, append([]*cairnv1.ChunkRef{{Digest: cache.ChunkDigest([]byte("never uploaded")).String(), SizeBytes: 14}}, refs...), codes.FailedPrecondition, cairnv1.ReasonFailedPrecondition, ""},
	}
	for _, b := range bogus {
		_, err := e.layers.CommitLayer(ctx, &cairnv1.CommitLayerRequest{Digest: b.digest, Chunks: b.refs})
		t.Run(b.name, func(t *testing.T) { wantStatus(t, err, b.code, b.reason, b.field) })
	}
	if _, err := e.layers.StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: d}); err == nil {
		t.Fatal("a bogus commit made the layer visible")
	}

	c, err := e.layers.CommitLayer(ctx, &cairnv1.CommitLayerRequest{Digest: d, Chunks: refs})
	if err != nil {
		t.Fatalf("CommitLayer: %v", err)
	}
	if c.GetLayer().GetSizeBytes() != int64(len(data)) || c.GetLayer().GetChunkCount() != int64(len(refs)) {
		t.Errorf("committed layer %v", c.GetLayer())
	}
	recipe, err := e.layers.GetLayerChunks(ctx, &cairnv1.GetLayerChunksRequest{Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	if len(recipe.GetChunks()) != len(refs) {
		t.Fatalf("recipe of %d chunks, want %d", len(recipe.GetChunks()), len(refs))
	}
	for i, r := range recipe.GetChunks() {
		if r.GetDigest() != refs[i].GetDigest() || r.GetSizeBytes() != refs[i].GetSizeBytes() {
			t.Errorf("recipe[%d] = %v, want %v", i, r, refs[i])
		}
	}

	// GetChunks in an order of our choosing, one twice.
	order := []int{2, 0, 4, 0, 1, 5, 3}
	req := &cairnv1.GetChunksRequest{}
	for _, i := range order {
		req.Digests = append(req.Digests, ids[i])
	}
	gs, err := e.layers.GetChunks(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	for k, i := range order {
		resp, err := gs.Recv()
		if err != nil {
			t.Fatalf("GetChunks message %d: %v", k, err)
		}
		if resp.GetDigest() != ids[i] || !bytes.Equal(resp.GetData(), chunks[i]) {
			t.Fatalf("GetChunks message %d: chunk %s of %d bytes, want chunk %d", k, resp.GetDigest(), len(resp.GetData()), i)
		}
	}
	if _, err := gs.Recv(); err != io.EOF {
		t.Fatalf("after the last chunk: %v, want EOF", err)
	}

	_, got, _, err := e.pull(ctx, &cairnv1.PullLayerRequest{Digest: d})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("pull of the committed layer: %d bytes, %v", len(got), err)
	}

	// A missing chunk ends GetChunks with NotFound.
	gs, err = e.layers.GetChunks(ctx, &cairnv1.GetChunksRequest{Digests: []string{ids[0], cache.ChunkDigest([]byte("nope")).String()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gs.Recv(); err != nil {
		t.Fatalf("first chunk: %v", err)
	}
	_, err = gs.Recv()
	wantStatus(t, err, codes.NotFound, cairnv1.ReasonNotFound, "")
}

func TestPutChunksMismatch(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	a, b := randomData(1, 1000), randomData(2, 1000)
	wrong := []*cairnv1.ChunkRef{{Digest: cache.ChunkDigest(b).String()}}
	_, err := e.putChunks(ctx, [][]byte{a}, wrong)
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonDigestMismatch, "")
	missing, err := e.layers.FindMissingChunks(ctx, &cairnv1.FindMissingChunksRequest{Digests: []string{wrong[0].GetDigest(), cache.ChunkDigest(a).String()}})
	if err != nil || len(missing.GetMissingDigests()) != 2 {
		t.Fatalf("after a mismatched put: missing %v, %v; want both", missing, err)
	}
	_, err = e.putChunks(ctx, [][]byte{a}, []*cairnv1.ChunkRef{{Digest: "blake3:abc"}})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "digest")
}

func TestTooManyChunks(t *testing.T) {
	e := newEnv(t, Options{})
	ids := make([]string, cairnv1.MaxChunksPerRequest+1)
	for i := range ids {
		ids[i] = cache.ChunkDigest(nil).String()
	}
	_, err := e.layers.FindMissingChunks(context.Background(), &cairnv1.FindMissingChunksRequest{Digests: ids})
	wantStatus(t, err, codes.ResourceExhausted, cairnv1.ReasonResourceExhausted, "digests")
}

func TestOversizedMessage(t *testing.T) {
	e := newEnv(t, Options{})
	big := make([]byte, DefaultMaxRecvMsgSize+1)
	_, err := e.putChunks(context.Background(), [][]byte{big}, []*cairnv1.ChunkRef{{Digest: cache.ChunkDigest(big).String()}})
	wantStatus(t, err, codes.ResourceExhausted, "", "") // gRPC's own status, without ErrorInfo
	// A chunk within the message limit but above the chunk limit is bad input.
	large := make([]byte, cache.MaxChunkSize+1)
	_, err = e.putChunks(context.Background(), [][]byte{large}, []*cairnv1.ChunkRef{{Digest: cache.ChunkDigest(large).String()}})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "data")
}

func TestListAndDelete(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	want := map[string]bool{}
	for i := range 5 {
		want[e.pushSimple(t, randomData(uint64(100+i), 1000+i)).GetDigest()] = true
	}
	got := map[string]bool{}
	token := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("too many pages")
		}
		resp, err := e.layers.ListLayers(ctx, &cairnv1.ListLayersRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetLayers()) > 2 {
			t.Fatalf("page of %d layers, asked for 2", len(resp.GetLayers()))
		}
		for _, l := range resp.GetLayers() {
			got[l.GetDigest()] = true
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(got) != len(want) {
		t.Fatalf("listed %d layers, want %d", len(got), len(want))
	}
	_, err := e.layers.ListLayers(ctx, &cairnv1.ListLayersRequest{PageToken: "!!not a token!!"})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "page_token")
	_, err = e.layers.ListLayers(ctx, &cairnv1.ListLayersRequest{PageSize: -1})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "page_size")

	for d := range want {
		if _, err := e.layers.DeleteLayer(ctx, &cairnv1.DeleteLayerRequest{Digest: d}); err != nil {
			t.Fatalf("DeleteLayer: %v", err)
		}
		_, err := e.layers.DeleteLayer(ctx, &cairnv1.DeleteLayerRequest{Digest: d})
		wantStatus(t, err, codes.NotFound, cairnv1.ReasonNotFound, "")
		_, err = e.layers.StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: d})
		wantStatus(t, err, codes.NotFound, cairnv1.ReasonNotFound, "")
		_, _, _, err = e.pull(ctx, &cairnv1.PullLayerRequest{Digest: d})
		wantStatus(t, err, codes.NotFound, cairnv1.ReasonNotFound, "")
		break
	}
}
