package backendtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cairnbuild/cairn/backend"
)

// Bench measures Put and Get (Open and read to the end) throughput for
// 256 KiB objects (the average chunk) and 4 MiB objects, each at 1, 8 and
// 32 concurrent callers. Sub-benchmarks are named op/size/cN, for example
// put/256KiB/c8, and report bytes per second through b.SetBytes. It writes
// under "bench/" in s and deletes what it wrote.
func Bench(b *testing.B, s backend.Store) {
	sizes := []struct {
		name string
		n    int
	}{{"256KiB", 256 << 10}, {"4MiB", 4 << 20}}
	for _, op := range []string{"put", "get"} {
		for _, size := range sizes {
			for _, c := range []int{1, 8, 32} {
				b.Run(fmt.Sprintf("%s/%s/c%d", op, size.name, c), func(b *testing.B) {
					benchOne(b, s, op, size.n, c)
				})
			}
		}
	}
}

func benchOne(b *testing.B, s backend.Store, op string, size, c int) {
	ctx := context.Background()
	data := Pattern{Seed: uint64(size)}.Bytes(size)
	// Enough distinct keys that concurrent callers rarely share one, few
	// enough (64 MiB or 2c objects) to keep the bench's disk use bounded.
	nkeys := max(2*c, (64<<20)/size)
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench/%s/%d/%04d", op, size, i)
	}
	defer func() {
		for _, k := range keys {
			s.Delete(ctx, k)
		}
	}()
	if op == "get" {
		for _, k := range keys {
			if err := s.Put(ctx, k, bytes.NewReader(data), int64(size)); err != nil {
				b.Fatalf("setup: Put(%s): %v", k, err)
			}
		}
	}

	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		failed  error
	)
	fail := func(err error) {
		errOnce.Do(func() { failed = err })
		next.Store(int64(b.N)) // stop the others
	}
	bufs := make([][]byte, c)
	for g := range bufs {
		bufs[g] = make([]byte, 256<<10)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for g := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bufs[g]
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				key := keys[i%int64(nkeys)]
				if op == "put" {
					if err := s.Put(ctx, key, bytes.NewReader(data), int64(size)); err != nil {
						fail(fmt.Errorf("Put(%s): %w", key, err))
						return
					}
					continue
				}
				rc, err := s.Open(ctx, key, 0, -1)
				if err != nil {
					fail(fmt.Errorf("Open(%s): %w", key, err))
					return
				}
				// Hide WriterTo and ReaderFrom so that every store's bytes
				// are copied once, through buf, as a real reader's would be.
				n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{rc}, buf)
				rc.Close()
				if err == nil && n != int64(size) {
					err = fmt.Errorf("read %d bytes, want %d", n, size)
				}
				if err != nil {
					fail(fmt.Errorf("Get(%s): %w", key, err))
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if failed != nil {
		b.Fatal(failed)
	}
}
