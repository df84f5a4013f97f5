package metrics

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairnbuild/cairn/backend"
)

// Backend holds the blob-store metrics. Wrap decorates a backend.Store with
// them; several stores may share one Backend (their numbers add up). It is
// safe for concurrent use.
type Backend struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	written  prometheus.Counter
	read     prometheus.Counter
	retries  *prometheus.CounterVec
}

// NewBackend registers the blob-store metrics with reg:
//
//   - cairn_backend_requests_total{op,result}: requests by operation (put,
//     open, stat, delete, list) and outcome (ok, not_found, unavailable,
//     canceled, error).
//   - cairn_backend_request_duration_seconds{op}: request latency; for open,
//     the time to open the object, not to read it.
//   - cairn_backend_written_bytes_total, cairn_backend_read_bytes_total:
//     object bytes put and read.
//   - cairn_backend_retries_total{op}: attempts repeated after a transient
//     failure (fed by OnRetry, for backend/retry).
func NewBackend(reg prometheus.Registerer) (*Backend, error) {
	m := &Backend{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_backend_requests_total",
			Help: "Blob store requests by operation and result.",
		}, []string{"op", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cairn_backend_request_duration_seconds",
			Help: "Blob store request latency by operation (open: until the object is open).",
			// 0.5 ms (a local file) to ~16 s (a throttled S3 request).
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"op"}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_backend_written_bytes_total",
			Help: "Object bytes written to the blob store.",
		}),
		read: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_backend_read_bytes_total",
			Help: "Object bytes read from the blob store.",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_backend_retries_total",
			Help: "Blob store attempts repeated after a transient failure, by operation.",
		}, []string{"op"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.written, m.read, m.retries} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// OnRetry counts a retried attempt; pass it as retry.Options.OnRetry
// (it takes the operation name so that this package need not import retry).
func (m *Backend) OnRetry(op string) { m.retries.WithLabelValues(op).Inc() }

// Wrap returns next with every request counted and timed.
func (m *Backend) Wrap(next backend.Store) *Store { return &Store{next: next, m: m} }

// Store is a backend.Store decorator that records metrics. It is safe for
// concurrent use if the wrapped Store is.
type Store struct {
	next backend.Store
	m    *Backend
}

var _ backend.Store = (*Store)(nil)

// Unwrap returns the wrapped Store.
func (s *Store) Unwrap() backend.Store { return s.next }

func (s *Store) observe(op string, start time.Time, err error) {
	s.m.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	s.m.requests.WithLabelValues(op, result(err)).Inc()
}

// result is the outcome label of err.
func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, backend.ErrNotFound):
		return "not_found"
	case errors.Is(err, backend.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "error"
}

// Put implements backend.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	start := time.Now()
	err := s.next.Put(ctx, key, r, size)
	s.observe("put", start, err)
	if err == nil {
		s.m.written.Add(float64(size))
	}
	return err
}

// Open implements backend.Store.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	start := time.Now()
	rc, err := s.next.Open(ctx, key, offset, length)
	s.observe("open", start, err)
	if err != nil {
		return nil, err
	}
	return &countingReader{rc: rc, c: s.m.read}, nil
}

// Stat implements backend.Store.
func (s *Store) Stat(ctx context.Context, key string) (backend.Info, error) {
	start := time.Now()
	info, err := s.next.Stat(ctx, key)
	s.observe("stat", start, err)
	return info, err
}

// Delete implements backend.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	start := time.Now()
	err := s.next.Delete(ctx, key)
	s.observe("delete", start, err)
	return err
}

// List implements backend.Store. The time includes fn's.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	start := time.Now()
	err := s.next.List(ctx, prefix, fn)
	s.observe("list", start, err)
	return err
}

// countingReader adds the bytes read to a counter, in one Add per Read.
type countingReader struct {
	rc io.ReadCloser
	c  prometheus.Counter
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if n > 0 {
		r.c.Add(float64(n))
	}
	return n, err
}

func (r *countingReader) Close() error { return r.rc.Close() }
