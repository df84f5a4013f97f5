package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/stepkey"
)

// logRecorder is a slog.Handler that keeps the records the server logs.
type logRecorder struct {
	mu      sync.Mutex
	records []logRecord
	added   chan struct{} // closed and replaced at every record
}

type logRecord struct {
	level       slog.Level
	msg, method string
	code        string
}

func newLogRecorder() *logRecorder { return &logRecorder{added: make(chan struct{})} }

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	lr := logRecord{level: rec.Level, msg: rec.Message}
	rec.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "method":
			lr.method = a.Value.String()
		case "code":
			lr.code = a.Value.String()
		}
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, lr)
	close(r.added)
	r.added = make(chan struct{})
	return nil
}

// wait returns the first record about method, waiting for it: the server
// logs a call after the client has seen it end.
func (r *logRecorder) wait(t *testing.T, method string) logRecord {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for _, rec := range r.records {
			if rec.method == method {
				r.mu.Unlock()
				return rec
			}
		}
		added := r.added
		r.mu.Unlock()
		select {
		case <-added:
		case <-timeout:
			t.Fatalf("nothing logged about %s; logged: %v", method, r.all())
		}
	}
}

func (r *logRecorder) all() []logRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]logRecord(nil), r.records...)
}

// noneAbove fails if anything was logged at level or above.
func (r *logRecorder) noneAbove(t *testing.T, level slog.Level) {
	t.Helper()
	for _, rec := range r.all() {
		if rec.level >= level {
			t.Errorf("logged %v %q about %s (code %s)", rec.level, rec.msg, rec.method, rec.code)
		}
	}
}

// cancelStore is the cache with hooks: Push signals when it starts, and
// Open's reader stops after the first data message until the call's
// context ends, then either returns more data (so the server's next Send
// meets the cancelled stream) or the context's error (as a store read would).
type cancelStore struct {
	*cache.Cache
	pushing  chan struct{}
	readErr  bool
	pullHeld chan struct{}
}

func (s *cancelStore) Push(ctx context.Context, r io.Reader, opts cache.PushOptions) (cache.LayerInfo, error) {
	s.pushing <- struct{}{}
	return s.Cache.Push(ctx, r, opts)
}

func (s *cancelStore) Open(ctx context.Context, d digest.Digest, offset, length int64) (io.ReadCloser, cache.LayerInfo, error) {
	rc, info, err := s.Cache.Open(ctx, d, offset, length)
	if err != nil {
		return nil, info, err
	}
	return &heldReader{ReadCloser: rc, ctx: ctx, s: s, left: cairnv1.MaxDataMessageBytes}, info, nil
}

type heldReader struct {
	io.ReadCloser
	ctx  context.Context
	s    *cancelStore
	left int
}

func (h *heldReader) Read(p []byte) (int, error) {
	if h.left == 0 {
		h.s.pullHeld <- struct{}{}
		<-h.ctx.Done()
		if h.s.readErr {
			return 0, fmt.Errorf("cache: read: %w", h.ctx.Err())
		}
		h.left = -1 // the rest flows
	}
	if h.left > 0 {
		p = p[:min(len(p), h.left)]
	}
	n, err := h.ReadCloser.Read(p)
	if h.left > 0 {
		h.left -= n
	}
	return n, err
}

// TestClientCancelIsNotAServerFailure checks that a client that goes away
// mid-stream, by cancelling the call or by closing its connection, is
// logged as cancelled, at Info, and never as a server failure (Error) or
// as trouble (Warn), in both directions. (Before, a pull whose client
// closed its connection was logged as a failed call, Warn Unavailable:
// the server's next Send met a closing transport.)
func TestClientCancelIsNotAServerFailure(t *testing.T) {
	const push, pull = "/cairn.v1.LayerService/PushLayer", "/cairn.v1.LayerService/PullLayer"
	for _, tt := range []struct {
		name, method string
		readErr      bool // the store's read fails first, else the server's next Send
		closeConn    bool // the client closes its connection, else cancels the call
	}{
		{"push cancelled", push, false, false},
		{"push, connection closed", push, false, true},
		{"pull cancelled, the next send fails", pull, false, false},
		{"pull cancelled, the store's read fails", pull, true, false},
		{"pull, connection closed", pull, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logs := newLogRecorder()
			cs := &cancelStore{pushing: make(chan struct{}, 1), pullHeld: make(chan struct{}, 1), readErr: tt.readErr}
			e := newEnvWith(t, Options{Logger: slog.New(logs)}, func(c *cache.Cache) Store { cs.Cache = c; return cs })
			data := randomData(7, 3<<20)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			leave := cancel
			if tt.closeConn {
				leave = func() { e.conn.Close() }
			}

			if tt.method == push {
				stream, err := e.layers.PushLayer(ctx)
				if err != nil {
					t.Fatal(err)
				}
				stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{
					ExpectedDigest: digest.FromBytes(data).String()}}})
				stream.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: data[:1<<20]}})
				<-cs.pushing // the store is reading the push
				leave()
				_, err = stream.CloseAndRecv()
				wantCode(t, err, codes.Canceled, codes.Unavailable)
			} else {
				e.pushSimple(t, data)
				<-cs.pushing // the setup push
				stream, err := e.layers.PullLayer(ctx, &cairnv1.PullLayerRequest{Digest: digest.FromBytes(data).String()})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := stream.Recv(); err != nil {
					t.Fatalf("first message: %v", err)
				}
				<-cs.pullHeld // the server is mid-stream
				leave()
				for err == nil {
					_, err = stream.Recv()
				}
				wantCode(t, err, codes.Canceled, codes.Unavailable)
			}

			rec := logs.wait(t, tt.method)
			if rec.level != slog.LevelInfo || rec.msg != "client cancelled" {
				t.Errorf("logged %v %q (code %s), want Info \"client cancelled\"", rec.level, rec.msg, rec.code)
			}
			logs.noneAbove(t, slog.LevelWarn)
			if tt.method == push {
				if _, err := e.cache.Stat(context.Background(), digest.FromBytes(data)); !errors.Is(err, cache.ErrNotFound) {
					t.Errorf("stat of the abandoned push: %v, want not found", err)
				}
			}
		})
	}
}

// wantCode checks that err is a gRPC status with one of codes: what the
// client sees of its own leaving depends on how it left.
func wantCode(t *testing.T, err error, codes ...codes.Code) {
	t.Helper()
	got := status.Code(err)
	if !slices.Contains(codes, got) {
		t.Errorf("got %v (%v), want one of %v", got, err, codes)
	}
}

// corruptStore answers like a cache whose index holds a value it cannot
// decode: the errors have the shape the cache gives them (the decode error
// wrapped in cache.ErrDataLoss, then the operation).
type corruptStore struct{ *cache.Cache }

func (corruptStore) LookupStepIn(_ context.Context, _ []string, parent digest.Digest, s stepkey.Step) (cache.StepRecord, error) {
	key, _ := stepkey.Key(parent, s)
	return cache.StepRecord{}, fmt.Errorf("cache: lookup step: %w", fmt.Errorf("%w: step %s: %w", cache.ErrDataLoss, key,
		errors.New("invalid character 'x' looking for beginning of value")))
}

func (corruptStore) Stat(_ context.Context, d digest.Digest) (cache.LayerInfo, error) {
	return cache.LayerInfo{}, fmt.Errorf("layer %s: %w", d, fmt.Errorf("%w: corrupt index record for layer %s", cache.ErrDataLoss, d))
}

// TestCorruptIndexValueIsDataLoss checks that a value the index cannot
// decode reaches the client as DATA_LOSS (never UNAVAILABLE, which tells
// it to retry) and is logged as a server failure.
func TestCorruptIndexValueIsDataLoss(t *testing.T) {
	logs := newLogRecorder()
	e := newEnvWith(t, Options{Logger: slog.New(logs)}, func(c *cache.Cache) Store { return corruptStore{c} })
	ctx := context.Background()

	_, err := e.steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Step: &cairnv1.Step{Instruction: "RUN true"}})
	wantStatus(t, err, codes.DataLoss, cairnv1.ReasonDataLoss, "")
	_, err = e.layers.StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: digest.FromString("x").String()})
	wantStatus(t, err, codes.DataLoss, cairnv1.ReasonDataLoss, "")

	for _, method := range []string{"/cairn.v1.CacheService/LookupStep", "/cairn.v1.LayerService/StatLayer"} {
		rec := logs.wait(t, method)
		if rec.level != slog.LevelError || rec.code != codes.DataLoss.String() {
			t.Errorf("%s: logged %v %q (code %s), want Error with code DataLoss", method, rec.level, rec.msg, rec.code)
		}
	}
	if t.Failed() {
		return
	}
	// A data loss found while the client was leaving is still logged as
	// one: it is worth a look whoever left.
	l := &callLogger{log: slog.New(logs)}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	l.done(cctx, "/test/Cancelled", toStatus(fmt.Errorf("read: %w", cache.ErrDataLoss)))
	if rec := logs.wait(t, "/test/Cancelled"); rec.level != slog.LevelError {
		t.Errorf("data loss in a cancelled call logged at %v, want Error", rec.level)
	}
	if !strings.Contains(fmt.Sprint(logs.all()), "call failed") {
		t.Errorf("no \"call failed\" record: %v", logs.all())
	}
}
