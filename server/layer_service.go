package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/peer"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/chunkid"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/transfer"
)

const (
	// putChunksParallel bounds the chunks of one PutChunks stream stored at
	// the same time: enough to overlap hashing, compression and a blob
	// store's latency, while holding at most 4 × 4 MiB per stream.
	putChunksParallel = 4
	// getChunksReadAhead is how many chunks one GetChunks stream reads
	// ahead of the one it sends, for the same reason and the same bound.
	getChunksReadAhead = 4
)

// pullBufs holds the buffers PullLayer cuts data messages from: one per
// pull in flight, reused across pulls.
var pullBufs = sync.Pool{New: func() any {
	b := make([]byte, cairnv1.MaxDataMessageBytes)
	return &b
}}

// layerService implements cairnv1.LayerService over a LayerStore, a
// ChunkStore and a StatsSource.
type layerService struct {
	cairnv1.UnimplementedLayerServiceServer
	layers   LayerStore
	chunks   ChunkStore
	stats    StatsSource
	m        *rpcMetrics
	idle     time.Duration // Options.StreamIdleTimeout
	sendIdle time.Duration // Options.SendIdleTimeout

	// transfers hands out a slot per data-carrying call in progress
	// (Options.MaxTransfers, MaxTransfersPerClient).
	transfers *transfer.Limiter
	// walks holds a token per GetStats walking the index: one at a time,
	// so that a burst of stats calls cannot fill the server with walks.
	walks chan struct{}
	// verifier runs VerifyStore; verifies holds a token per run, one at
	// a time (not walks' token: a verify takes hours, a GetStats must not
	// wait for it).
	verifier StoreVerifier
	verifies chan struct{}
	// collector runs CollectGarbage (one at a time: the cache queues them).
	collector Collector
	// gcDefaults fill what a CollectGarbage request leaves unset
	// (Options.GCDefaults).
	gcDefaults GCDefaults
}

// acquire waits for a transfer slot for the call's client (the token's
// name when auth names one, else its peer's IP address); the caller calls
// the returned release when done. A call whose context ends first fails
// with the context's error.
func (s *layerService) acquire(ctx context.Context) (release func(), err error) {
	client := "unknown"
	if id, ok := auth.FromContext(ctx); ok && !id.Anonymous {
		client = "token " + id.Name
	} else if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		client = transfer.Host(p.Addr.String())
	}
	rel, err := s.transfers.Acquire(ctx, client)
	if err != nil {
		return nil, err
	}
	s.m.transfer(1)
	return func() {
		rel()
		s.m.transfer(-1)
	}, nil
}

// recvIdle receives the next message of a client stream. If none arrives
// within the idle timeout, it cancels ctx with errStreamIdle and returns
// that error; the Recv left behind returns once the handler has returned
// (gRPC ends the stream then), so callers must return on any error.
func recvIdle[T any](ctx context.Context, s *layerService, cancel context.CancelCauseFunc, recv func() (*T, error)) (*T, error) {
	type result struct {
		msg *T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := recv()
		ch <- result{m, err}
	}()
	t := time.NewTimer(s.idle)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.msg, r.err
	case <-t.C:
		cancel(errStreamIdle)
		return nil, errStreamIdle
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// sendIdle sends one message of a server stream. If the transport does
// not take it within the send idle timeout (the client stopped reading and
// flow control is full), it cancels ctx with errSendIdle and returns that
// error. The Send left behind returns once the handler has returned (gRPC
// cancels the stream then), so callers must return on any error, and must
// not reuse what the message points to after an idle timeout.
func sendIdle(ctx context.Context, s *layerService, cancel context.CancelCauseFunc, send func() error) error {
	ch := make(chan error, 1)
	go func() { ch <- send() }()
	t := time.NewTimer(s.sendIdle)
	defer t.Stop()
	select {
	case err := <-ch:
		return err
	case <-t.C:
		cancel(errSendIdle)
		return errSendIdle
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// PushLayer implements cairnv1.LayerServiceServer. The data messages are
// piped into cache.Push as they arrive: the pipe holds one message at a
// time, so a slow blob store slows the client (gRPC flow control) instead of
// filling memory.
func (s *layerService) PushLayer(stream cairnv1.LayerService_PushLayerServer) error {
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)

	first, err := recvIdle(ctx, s, cancel, stream.Recv)
	if err == io.EOF {
		return toStatus(fmt.Errorf("%w: empty stream, want a header first", errInvalidArgument))
	}
	if err != nil {
		return toStatus(withCause(ctx, err))
	}
	h := first.GetHeader()
	if h == nil {
		return toStatus(fieldErr("header", fmt.Errorf("%w: the first message must carry the header", errInvalidArgument)))
	}
	expected, err := parseDigest("header.expected_digest", h.GetExpectedDigest(), true)
	if err != nil {
		return toStatus(err)
	}
	size := int64(-1)
	if h.SizeBytes != nil {
		if size = h.GetSizeBytes(); size < 0 {
			return toStatus(fieldErr("header.size_bytes", fmt.Errorf("%w: negative size %d", errInvalidArgument, size)))
		}
	}
	if err := checkMediaType("header.media_type", h.GetMediaType()); err != nil {
		return toStatus(err)
	}
	release, err := s.acquire(ctx)
	if err != nil {
		return toStatus(withCause(ctx, err))
	}
	defer release()

	pr, pw := io.Pipe()
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		pw.CloseWithError(s.pump(ctx, cancel, stream, pw))
	}()
	info, err := s.layers.Push(ctx, pr, cache.PushOptions{Expected: expected, Size: size, MediaType: h.GetMediaType()})
	// Unblock a pump stuck in Write if Push stopped reading early.
	pr.CloseWithError(errors.New("push ended"))
	if err != nil {
		return toStatus(withCause(ctx, err))
	}
	// Push read to the end, so the pump saw the client close the stream.
	select {
	case <-pumped:
	case <-ctx.Done():
		return toStatus(withCause(ctx, ctx.Err()))
	}
	return stream.SendAndClose(&cairnv1.PushLayerResponse{Layer: layerToProto(info)})
}

// pump copies the data messages of a push into w until the client closes
// the stream (nil) or something fails (the error the reader sees).
func (s *layerService) pump(ctx context.Context, cancel context.CancelCauseFunc, stream cairnv1.LayerService_PushLayerServer, w io.Writer) error {
	for {
		msg, err := recvIdle(ctx, s, cancel, stream.Recv)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		d, ok := msg.GetContent().(*cairnv1.PushLayerRequest_Data)
		if !ok {
			return fieldErr("header", fmt.Errorf("%w: a second header", errInvalidArgument))
		}
		s.m.addReceived(len(d.Data))
		if _, err := w.Write(d.Data); err != nil {
			return err
		}
	}
}

// PullLayer implements cairnv1.LayerServiceServer. A client that stops
// reading for the send idle timeout loses the call (see sendIdle).
func (s *layerService) PullLayer(req *cairnv1.PullLayerRequest, stream cairnv1.LayerService_PullLayerServer) error {
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	d, err := parseDigest("digest", req.GetDigest(), false)
	if err != nil {
		return toStatus(err)
	}
	if req.GetOffset() < 0 {
		return toStatus(fieldErr("offset", fmt.Errorf("%w: negative offset %d", errInvalidArgument, req.GetOffset())))
	}
	length := req.GetLength()
	switch {
	case length < 0:
		return toStatus(fieldErr("length", fmt.Errorf("%w: negative length %d", errInvalidArgument, length)))
	case length == 0:
		length = -1 // to the end
	}
	release, err := s.acquire(ctx)
	if err != nil {
		return toStatus(err)
	}
	defer release()
	rc, info, err := s.layers.Open(ctx, d, req.GetOffset(), length)
	if err != nil {
		return toStatus(err)
	}
	defer rc.Close()

	bufp := pullBufs.Get().(*[]byte)
	reuse := true
	defer func() {
		if reuse {
			pullBufs.Put(bufp)
		}
	}()
	buf := *bufp
	resp := &cairnv1.PullLayerResponse{Layer: layerToProto(info)}
	for {
		n, rerr := io.ReadFull(rc, buf)
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			return toStatus(withCause(ctx, rerr))
		}
		// The first message goes out even if empty: it carries the info.
		if n > 0 || resp.Layer != nil {
			resp.Data = buf[:n]
			// SendMsg has encoded the message when it returns, so buf can
			// be refilled.
			if err := sendIdle(ctx, s, cancel, func() error { return stream.Send(resp) }); err != nil {
				// A Send abandoned by sendIdle may still read buf: leave
				// it to the garbage collector.
				reuse = false
				return toStatus(withCause(ctx, err))
			}
			s.m.addSent(n)
			resp.Layer = nil
		}
		if rerr != nil {
			return nil
		}
	}
}

// StatLayer implements cairnv1.LayerServiceServer.
func (s *layerService) StatLayer(ctx context.Context, req *cairnv1.StatLayerRequest) (*cairnv1.StatLayerResponse, error) {
	d, err := parseDigest("digest", req.GetDigest(), false)
	if err != nil {
		return nil, toStatus(err)
	}
	info, err := s.layers.Stat(ctx, d)
	if err != nil {
		return nil, toStatus(err)
	}
	return &cairnv1.StatLayerResponse{Layer: layerToProto(info)}, nil
}

// ListLayers implements cairnv1.LayerServiceServer.
func (s *layerService) ListLayers(ctx context.Context, req *cairnv1.ListLayersRequest) (*cairnv1.ListLayersResponse, error) {
	if req.GetPageSize() < 0 {
		return nil, toStatus(fieldErr("page_size", fmt.Errorf("%w: negative page size %d", errInvalidArgument, req.GetPageSize())))
	}
	// The listing hands out every digest: read on every namespace.
	if err := auth.Check(ctx, auth.Read, allNamespaces); err != nil {
		return nil, toStatus(err)
	}
	infos, next, err := s.layers.List(ctx, req.GetPageToken(), int(req.GetPageSize()))
	if err != nil {
		var fe *fieldError
		if errors.Is(err, cache.ErrInvalidArgument) && !errors.As(err, &fe) {
			err = fieldErr("page_token", err)
		}
		return nil, toStatus(err)
	}
	resp := &cairnv1.ListLayersResponse{Layers: make([]*cairnv1.Layer, len(infos)), NextPageToken: next}
	for i, info := range infos {
		resp.Layers[i] = layerToProto(info)
	}
	return resp, nil
}

// DeleteLayer implements cairnv1.LayerServiceServer.
func (s *layerService) DeleteLayer(ctx context.Context, req *cairnv1.DeleteLayerRequest) (*cairnv1.DeleteLayerResponse, error) {
	d, err := parseDigest("digest", req.GetDigest(), false)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := s.layers.Delete(ctx, d); err != nil {
		return nil, toStatus(err)
	}
	return &cairnv1.DeleteLayerResponse{}, nil
}

// FindMissingChunks implements cairnv1.LayerServiceServer.
func (s *layerService) FindMissingChunks(ctx context.Context, req *cairnv1.FindMissingChunksRequest) (*cairnv1.FindMissingChunksResponse, error) {
	ids, err := parseChunkDigests("digests", req.GetDigests(), cairnv1.MaxChunksPerRequest)
	if err != nil {
		return nil, toStatus(err)
	}
	missing, err := s.chunks.MissingChunks(ctx, ids)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &cairnv1.FindMissingChunksResponse{MissingDigests: make([]string, len(missing))}
	for i, d := range missing {
		resp.MissingDigests[i] = d.String()
	}
	return resp, nil
}

// PutChunks implements cairnv1.LayerServiceServer. Up to putChunksParallel
// chunks are verified and compressed at once, into the packs of one
// ChunkUpload; the first failure ends the call, and the chunks accepted
// before it are still stored.
func (s *layerService) PutChunks(stream cairnv1.LayerService_PutChunksServer) error {
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	release, err := s.acquire(ctx)
	if err != nil {
		return toStatus(err)
	}
	defer release()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(putChunksParallel)
	// The stream's chunks go to packs together; not under ctx, which fail
	// cancels, so that the chunks accepted before a failure are stored.
	up := s.chunks.NewChunkUpload(stream.Context())
	var count, received int64
	fail := func(err error) error {
		cancel(nil)
		if gerr := g.Wait(); gerr != nil && !errors.Is(gerr, context.Canceled) {
			err = gerr // a store that failed first explains the rest
		}
		up.Close()
		return toStatus(withCause(ctx, err))
	}
	for i := 0; ; i++ {
		msg, err := recvIdle(ctx, s, cancel, stream.Recv)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(err)
		}
		if gctx.Err() != nil {
			break // a store failed: g.Wait below says which
		}
		d, err := parseChunkDigest("digest", msg.GetDigest())
		if err != nil {
			return fail(err)
		}
		data := msg.GetData()
		if len(data) > cache.MaxChunkSize {
			return fail(fieldErr("data", fmt.Errorf("%w: chunk of %d bytes, at most %d", errInvalidArgument, len(data), cache.MaxChunkSize)))
		}
		s.m.addReceived(len(data))
		count++
		received += int64(len(data))
		g.Go(func() error { return up.Put(gctx, d, data) })
	}
	if err := g.Wait(); err != nil {
		up.Close() // the chunks accepted before the failure are still stored
		return toStatus(withCause(ctx, err))
	}
	if err := up.Close(); err != nil {
		return toStatus(withCause(ctx, err))
	}
	return stream.SendAndClose(&cairnv1.PutChunksResponse{ChunkCount: count, ReceivedBytes: received})
}

// CommitLayer implements cairnv1.LayerServiceServer.
func (s *layerService) CommitLayer(ctx context.Context, req *cairnv1.CommitLayerRequest) (*cairnv1.CommitLayerResponse, error) {
	d, err := parseDigest("digest", req.GetDigest(), false)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := checkMediaType("media_type", req.GetMediaType()); err != nil {
		return nil, toStatus(err)
	}
	if n := len(req.GetChunks()); n > cairnv1.MaxChunksPerRequest {
		return nil, toStatus(fieldErr("chunks", fmt.Errorf("%w: %d chunks, at most %d per request", errTooMany, n, cairnv1.MaxChunksPerRequest)))
	}
	refs := make([]cache.ChunkRef, len(req.GetChunks()))
	for i, c := range req.GetChunks() {
		id, err := parseChunkDigest(fmt.Sprintf("chunks[%d].digest", i), c.GetDigest())
		if err != nil {
			return nil, toStatus(err)
		}
		if c.GetSizeBytes() <= 0 || c.GetSizeBytes() > cache.MaxChunkSize {
			return nil, toStatus(fieldErr(fmt.Sprintf("chunks[%d].size_bytes", i),
				fmt.Errorf("%w: chunk size %d, want 1 to %d", errInvalidArgument, c.GetSizeBytes(), cache.MaxChunkSize)))
		}
		refs[i] = cache.ChunkRef{ID: id, Size: c.GetSizeBytes()}
	}
	release, err := s.acquire(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	defer release()
	info, err := s.chunks.Commit(ctx, d, req.GetMediaType(), refs)
	if err != nil {
		return nil, toStatus(err)
	}
	return &cairnv1.CommitLayerResponse{Layer: layerToProto(info)}, nil
}

// GetLayerChunks implements cairnv1.LayerServiceServer.
func (s *layerService) GetLayerChunks(ctx context.Context, req *cairnv1.GetLayerChunksRequest) (*cairnv1.GetLayerChunksResponse, error) {
	d, err := parseDigest("digest", req.GetDigest(), false)
	if err != nil {
		return nil, toStatus(err)
	}
	info, err := s.layers.Stat(ctx, d)
	if err != nil {
		return nil, toStatus(err)
	}
	refs, err := s.chunks.Chunks(ctx, d)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &cairnv1.GetLayerChunksResponse{Layer: layerToProto(info), Chunks: make([]*cairnv1.ChunkRef, len(refs))}
	for i, r := range refs {
		resp.Chunks[i] = &cairnv1.ChunkRef{Digest: r.ID.String(), SizeBytes: r.Size}
	}
	return resp, nil
}

// GetChunks implements cairnv1.LayerServiceServer. It reads up to
// getChunksReadAhead chunks ahead of the one it sends, and sends them in the
// order requested. A client that stops reading for the send idle timeout
// loses the call (see sendIdle).
func (s *layerService) GetChunks(req *cairnv1.GetChunksRequest, stream cairnv1.LayerService_GetChunksServer) error {
	ids, err := parseChunkDigests("digests", req.GetDigests(), cairnv1.MaxChunksPerRequest)
	if err != nil {
		return toStatus(err)
	}
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil) // ends the reads still running when a send fails
	release, err := s.acquire(ctx)
	if err != nil {
		return toStatus(err)
	}
	defer release()

	type result struct {
		data []byte
		err  error
	}
	results := make([]chan result, len(ids))
	start := func(i int) {
		ch := make(chan result, 1) // buffered: a read never waits for a sender that gave up
		results[i] = ch
		go func(id chunkid.ID) {
			data, err := s.chunks.ReadChunk(ctx, id)
			ch <- result{data, err}
		}(ids[i])
	}
	for i := 0; i < len(ids) && i < getChunksReadAhead; i++ {
		start(i)
	}
	resp := &cairnv1.GetChunksResponse{}
	for i, id := range ids {
		r := <-results[i]
		results[i] = nil
		if next := i + getChunksReadAhead; next < len(ids) {
			start(next)
		}
		if r.err != nil {
			return toStatus(withCause(ctx, r.err))
		}
		resp.Digest, resp.Data = id.String(), r.data
		if err := sendIdle(ctx, s, cancel, func() error { return stream.Send(resp) }); err != nil {
			return toStatus(withCause(ctx, err))
		}
		s.m.addSent(len(r.data))
	}
	return nil
}

// GetStats implements cairnv1.LayerServiceServer. The walks run one at a
// time; a call waits for the one in progress (within its deadline) and
// then walks itself, so that its answer includes every change made before
// it was asked.
func (s *layerService) GetStats(ctx context.Context, _ *cairnv1.GetStatsRequest) (*cairnv1.GetStatsResponse, error) {
	// The totals walk the whole index and count every namespace's records.
	if err := auth.Check(ctx, auth.Read, allNamespaces); err != nil {
		return nil, toStatus(err)
	}
	select {
	case s.walks <- struct{}{}:
	case <-ctx.Done():
		return nil, toStatus(ctx.Err())
	}
	defer func() { <-s.walks }()
	st, err := s.stats.Stats(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &cairnv1.GetStatsResponse{
		LayerCount:               st.Layers,
		ChunkCount:               st.Chunks,
		StepCount:                st.Steps,
		LogicalSizeBytes:         st.LogicalBytes,
		StoredSizeBytes:          st.StoredBytes,
		UniqueSizeBytes:          st.UniqueBytes,
		RepositoryCount:          st.Repositories,
		TagCount:                 st.Tags,
		ManifestCount:            st.Manifests,
		QuarantinedChunkCount:    st.Quarantined,
		IngestStoredSizeBytes:    st.IngestBytes,
		CompactedStoredSizeBytes: st.CompactedBytes,
		IngestChunkCount:         st.IngestChunks,
		CompactedChunkCount:      st.CompactedChunks,
	}, nil
}

// layerToProto converts a cache.LayerInfo.
func layerToProto(info cache.LayerInfo) *cairnv1.Layer {
	return &cairnv1.Layer{
		Digest:            info.Digest.String(),
		SizeBytes:         info.Size,
		StoredSizeBytes:   info.StoredSize,
		MediaType:         info.MediaType,
		ChunkCount:        int64(info.Chunks),
		CreateTime:        timestamp(info.Created),
		AccessTime:        timestamp(info.Accessed),
		DamagedChunkCount: int64(info.DamagedChunks),
	}
}
