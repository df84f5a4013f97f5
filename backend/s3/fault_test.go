package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/retry"
)

// Fault tests: each runs a private MinIO (startMinio) and kills it with
// SIGKILL in the middle of a transfer.

// faultDeadline is the context deadline of the operation under test; the
// failure must be reported well before it.
const faultDeadline = 20 * time.Second

// trickleReader serves data in 64 KiB reads; once it has served `after`
// bytes it closes started and slows down to one read per pause, so that a
// Put is still sending when the test kills the server.
type trickleReader struct {
	data    []byte
	after   int
	pause   time.Duration
	started chan struct{}
	off     int
}

func (r *trickleReader) Read(p []byte) (int, error) {
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	if r.off >= r.after {
		if r.started != nil {
			close(r.started)
			r.started = nil
		}
		time.Sleep(r.pause)
	}
	n := copy(p[:min(len(p), 64<<10)], r.data[r.off:])
	r.off += n
	return n, nil
}

// mustFailPromptly checks err is ErrUnavailable, returned before ctx's
// deadline.
func mustFailPromptly(t *testing.T, what string, ctx context.Context, err error, since time.Time) {
	t.Helper()
	mustBeIs(t, what, err, backend.ErrUnavailable)
	if ctx.Err() != nil {
		t.Errorf("%s: failed only when the context ended (%v)", what, ctx.Err())
	}
	t.Logf("%s: failed %v after the kill: %v", what, time.Since(since).Round(time.Millisecond), err)
}

func TestFaultKillDuringPut(t *testing.T) {
	tests := []struct {
		name     string
		partSize int64
		size     int
	}{
		{"single PUT", 0, 8 << 20},
		{"multipart", minPartSize, 3*minPartSize + 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if testing.Short() && tt.partSize != 0 {
				t.Skip("multipart variant skipped under -short (two more MinIO starts)")
			}
			m := startMinio(t)
			opts := m.options("fault")
			opts.PartSize = tt.partSize
			s, err := New(ctxT(t), opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), faultDeadline)
			defer cancel()
			started := make(chan struct{})
			// Past the first part for multipart, so that parts are stored.
			after := min(tt.size/2, minPartSize+(1<<20))
			r := &trickleReader{data: data(tt.size, 7), after: after, pause: 5 * time.Millisecond, started: started}
			errc := make(chan error, 1)
			go func() { errc <- s.Put(ctx, "victim", r, int64(tt.size)) }()
			select {
			case <-started:
			case err := <-errc:
				t.Fatalf("Put ended before the kill: %v", err)
			case <-time.After(faultDeadline):
				t.Fatal("Put did not start sending")
			}
			m.kill()
			killed := time.Now()
			err = <-errc
			mustFailPromptly(t, "Put", ctx, err, killed)

			// While the server is down, every call is unavailable, at once.
			for name, call := range map[string]func() error{
				"Stat": func() error { _, err := s.Stat(ctx, "victim"); return err },
				"Open": func() error { _, err := s.Open(ctx, "victim", 0, -1); return err },
				"Put": func() error {
					return s.Put(ctx, "other", bytes.NewReader([]byte("x")), 1)
				},
				"List": func() error { return s.List(ctx, "", func(backend.Info) error { return nil }) },
			} {
				start := time.Now()
				mustFailPromptly(t, name+" on a dead server", ctx, call(), start)
			}

			m.start()
			if _, err := s.Stat(ctx, "victim"); !errors.Is(err, backend.ErrNotFound) {
				t.Errorf("after the restart: Stat(victim) = %v, want ErrNotFound", err)
			}
			var keys []string
			if err := s.List(ctx, "", func(i backend.Info) error { keys = append(keys, i.Key); return nil }); err != nil || len(keys) > 0 {
				t.Errorf("after the restart: List = %v, %v; want nothing", keys, err)
			}
			// The store works again without being reopened.
			if err := s.Put(ctx, "after", bytes.NewReader([]byte("ok")), 2); err != nil {
				t.Errorf("Put after the restart: %v", err)
			}
		})
	}
}

func TestFaultKillDuringGet(t *testing.T) {
	size := 64 << 20
	if testing.Short() {
		size = 32 << 20
	}
	m := startMinio(t)
	s, err := New(ctxT(t), m.options("fault"))
	if err != nil {
		t.Fatal(err)
	}
	want := data(size, 8)
	if err := s.Put(ctxT(t), "big", bytes.NewReader(want), int64(size)); err != nil {
		t.Fatal(err)
	}
	wantSum := sha256.Sum256(want)

	ctx, cancel := context.WithTimeout(context.Background(), faultDeadline)
	defer cancel()
	rc, err := s.Open(ctx, "big", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	// A slow consumer: 1 MiB read, then the server dies.
	if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	m.kill()
	killed := time.Now()
	n, err := io.Copy(io.Discard, rc)
	if err == nil {
		t.Fatalf("read the whole object (%d more bytes) from a killed server", n)
	}
	mustFailPromptly(t, "read", ctx, err, killed)
	t.Logf("read %d MiB more after the kill", n>>20)

	m.start()
	rc2, err := s.Open(ctx, "big", 0, -1)
	if err != nil {
		t.Fatalf("Open after the restart: %v", err)
	}
	defer rc2.Close()
	h := sha256.New()
	if n, err := io.Copy(h, rc2); err != nil || n != int64(size) || !bytes.Equal(h.Sum(nil), wantSum[:]) {
		t.Errorf("after the restart: read %d bytes, %v; want the %d bytes written, intact", n, err, size)
	}
}

// TestFaultRetryOutlastsOutage stops the server, restarts it a second later
// and checks that a Put through backend/retry with a budget of several
// seconds rides the outage out.
func TestFaultRetryOutlastsOutage(t *testing.T) {
	m := startMinio(t)
	s, err := New(ctxT(t), m.options("fault"))
	if err != nil {
		t.Fatal(err)
	}
	var events []retry.Event
	rs := retry.New(s, retry.Options{
		Attempts:  30,
		BaseDelay: 50 * time.Millisecond,
		MaxDelay:  500 * time.Millisecond, // about 12 s in all
		OnRetry:   func(e retry.Event) { events = append(events, e) },
	})
	m.kill()
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		restarted <- m.tryStart()
	}()
	want := data(1<<20, 9)
	ctx, cancel := context.WithTimeout(context.Background(), faultDeadline)
	defer cancel()
	start := time.Now()
	err = rs.Put(ctx, "k", bytes.NewReader(want), int64(len(want)))
	if rerr := <-restarted; rerr != nil {
		t.Fatalf("restarting minio: %v", rerr)
	}
	if err != nil {
		t.Fatalf("Put through retry across a 1 s outage: %v", err)
	}
	st := rs.Stats()
	t.Logf("Put succeeded after %v and %d retries", time.Since(start).Round(time.Millisecond), st.Retries)
	if st.Retries == 0 || len(events) == 0 {
		t.Errorf("Put succeeded without a retry (stats %+v): the outage was not seen", st)
	}
	for _, e := range events {
		mustBeIs(t, "retried error", e.Err, backend.ErrUnavailable)
	}
	got := readAll(t, s, "k", 0, -1)
	if !bytes.Equal(got, want) {
		t.Errorf("read back %d bytes, not what was put", len(got))
	}
}
