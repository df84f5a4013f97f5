package load

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// fake is an in-memory Target.
type fake struct {
	mu     sync.Mutex
	layers map[string]int64
	steps  map[string]string
	fail   bool
}

func newFake() *fake { return &fake{layers: map[string]int64{}, steps: map[string]string{}} }

func (f *fake) Push(ctx context.Context, r io.Reader, size int64) (string, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", err
	}
	if n != size {
		return "", errors.New("size mismatch")
	}
	id := "sha256:" + hex.EncodeToString(h.Sum(nil))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return "", errors.New("push refused")
	}
	f.layers[id] = n
	return id, nil
}

func (f *fake) Pull(ctx context.Context, id string, w io.Writer) (int64, error) {
	f.mu.Lock()
	n, ok := f.layers[id]
	f.mu.Unlock()
	if !ok {
		return 0, errors.New("not found")
	}
	return io.CopyN(w, zeros{}, n)
}

func (f *fake) Record(ctx context.Context, chain []string, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := ""
	for _, instr := range chain {
		key += instr + "\n"
		f.steps[key] = id
	}
	return nil
}

func (f *fake) Lookup(ctx context.Context, chain []string) (int, error) {
	time.Sleep(50 * time.Microsecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	key := ""
	for i, instr := range chain {
		key += instr + "\n"
		if _, ok := f.steps[key]; !ok {
			return i, nil
		}
	}
	return len(chain), nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestRunStopsAtMaxOps(t *testing.T) {
	f := newFake()
	r, err := Run(context.Background(), f, Options{Clients: 3, Duration: time.Minute, MaxOps: 300, LayerBytes: 64 << 10, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	all := r.Ops[len(r.Ops)-1]
	if all.Count != 300 || !r.StoppedByMaxOps || r.Errors != 0 {
		t.Fatalf("count %d, stopped by max ops %v, errors %d; want 300, true, 0", all.Count, r.StoppedByMaxOps, r.Errors)
	}
	var sum int64
	for _, s := range r.Ops[:numOps] {
		sum += s.Count
		if s.Count == 0 {
			t.Errorf("no %s in 300 operations of a 70/15/15 mix", s.Op)
		}
		if s.P50Ms > s.P99Ms || s.P99Ms > s.P999Ms || s.P999Ms > s.MaxMs {
			t.Errorf("%s: percentiles not ordered: %+v", s.Op, s)
		}
	}
	if sum != all.Count {
		t.Errorf("kinds add up to %d, all says %d", sum, all.Count)
	}
	lk := r.Ops[OpLookup]
	if lk.Hits == 0 || lk.Hits == lk.Count {
		t.Errorf("lookups: %d hits of %d; want some hits and some misses", lk.Hits, lk.Count)
	}
	if r.Ops[OpPush].Bytes != r.Ops[OpPush].Count*(64<<10) {
		t.Errorf("push bytes %d for %d pushes of 64 KiB", r.Ops[OpPush].Bytes, r.Ops[OpPush].Count)
	}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil || !strings.Contains(b.String(), "p99.9") {
		t.Errorf("text: %v\n%s", err, b.String())
	}
}

func TestChains(t *testing.T) {
	r, err := Run(context.Background(), newFake(), Options{Clients: 2, MaxOps: 200, Mix: [numOps]int{1, 0, 0}, ChainSteps: 5, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	lk := r.Ops[OpLookup]
	if r.ChainSteps != 5 || lk.Count != 200 || lk.Hits == 0 || lk.Hits == lk.Count {
		t.Errorf("chain steps %d, %d lookups, %d whole-chain hits; want 5, 200, some but not all", r.ChainSteps, lk.Count, lk.Hits)
	}
}

func TestRunStopsAtDuration(t *testing.T) {
	start := time.Now()
	r, err := Run(context.Background(), newFake(), Options{Clients: 2, Duration: 200 * time.Millisecond, LayerBytes: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("ran %s for a 200ms duration", d)
	}
	if r.StoppedByMaxOps || r.Ops[len(r.Ops)-1].Count == 0 {
		t.Errorf("stopped by max ops %v, count %d", r.StoppedByMaxOps, r.Ops[len(r.Ops)-1].Count)
	}
}

func TestErrorsAreCounted(t *testing.T) {
	f := newFake()
	// Seed first, then make every push fail.
	r, err := Run(context.Background(), &failAfterSeed{fake: f}, Options{Clients: 2, MaxOps: 200, Mix: [numOps]int{0, 1, 0}, LayerBytes: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors != 200 || r.FirstError == "" {
		t.Errorf("errors %d first %q; want 200 and a message", r.Errors, r.FirstError)
	}
}

type failAfterSeed struct {
	*fake
	seeded int
}

func (f *failAfterSeed) Record(ctx context.Context, chain []string, id string) error {
	f.seeded++
	if f.seeded == 4 {
		f.fake.fail = true
	}
	return f.fake.Record(ctx, chain, id)
}

func TestSeedFailureIsAnError(t *testing.T) {
	f := newFake()
	f.fail = true
	if _, err := Run(context.Background(), f, Options{MaxOps: 10}); err == nil {
		t.Fatal("a target that refuses the seed pushes: want an error")
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i))
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}, {0, 1}} {
		if got := Percentile(s, tc.q); got != tc.want {
			t.Errorf("Percentile(1..1000, %v) = %d, want %d", tc.q, got, tc.want)
		}
	}
}
