package metrics

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/stepkey"
)

// The cache is a StepCache.
var _ StepCache = (*cache.Cache)(nil)

// fakeSteps answers from a set of cached instructions: LookupStep hits a
// cached one, LookupChain walks while they are cached. An instruction
// "FAIL" fails the call as an index that cannot serve would.
type fakeSteps struct {
	cached   map[string]bool
	recorded int
}

var errIndexDown = fmt.Errorf("index: %w", cache.ErrUnavailable)

func (f *fakeSteps) LookupStepIn(_ context.Context, _ []string, _ digest.Digest, s stepkey.Step) (cache.StepRecord, error) {
	switch {
	case s.Instruction == "FAIL":
		return cache.StepRecord{}, errIndexDown
	case f.cached[s.Instruction]:
		return cache.StepRecord{Step: s}, nil
	}
	return cache.StepRecord{}, fmt.Errorf("step: %w", cache.ErrNotFound)
}

func (f *fakeSteps) LookupChainIn(_ context.Context, _ []string, _ digest.Digest, steps []stepkey.Step) ([]cache.StepRecord, error) {
	var out []cache.StepRecord
	for _, s := range steps {
		if s.Instruction == "FAIL" {
			return nil, errIndexDown
		}
		if !f.cached[s.Instruction] {
			break
		}
		out = append(out, cache.StepRecord{Step: s})
	}
	return out, nil
}

func (f *fakeSteps) RecordStepIn(_ context.Context, _ string, _ digest.Digest, s stepkey.Step, _ *cache.LayerRef, _ []byte) (cache.StepRecord, error) {
	f.recorded++
	f.cached[s.Instruction] = true
	return cache.StepRecord{Step: s}, nil
}

func steps(instructions ...string) []stepkey.Step {
	out := make([]stepkey.Step, len(instructions))
	for i, in := range instructions {
		out[i] = stepkey.Step{Instruction: in}
	}
	return out
}

func TestStepsCountsHitsAndMisses(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		call      func(StepCache) error
		hit, miss float64
	}{
		{"a hit", func(s StepCache) error { _, err := s.LookupStepIn(ctx, nil, "", steps("RUN a")[0]); return err }, 1, 0},
		{"a miss is a miss, and still the store's ErrNotFound", func(s StepCache) error {
			_, err := s.LookupStepIn(ctx, nil, "", steps("RUN x")[0])
			if !errors.Is(err, cache.ErrNotFound) {
				return fmt.Errorf("got %v, want the miss passed through", err)
			}
			return nil
		}, 0, 1},
		{"a failed lookup counts neither", func(s StepCache) error {
			if _, err := s.LookupStepIn(ctx, nil, "", steps("FAIL")[0]); !errors.Is(err, cache.ErrUnavailable) {
				return fmt.Errorf("got %v, want the failure passed through", err)
			}
			return nil
		}, 0, 0},
		{"a chain counts each hit and the miss that ends it", func(s StepCache) error {
			recs, err := s.LookupChainIn(ctx, nil, "", steps("RUN a", "RUN b", "RUN x", "RUN a"))
			if len(recs) != 2 {
				return fmt.Errorf("%d records, want 2", len(recs))
			}
			return err
		}, 2, 1},
		{"a chain cached to its end has no miss", func(s StepCache) error {
			_, err := s.LookupChainIn(ctx, nil, "", steps("RUN a", "RUN b"))
			return err
		}, 2, 0},
		{"a chain that misses at once", func(s StepCache) error {
			_, err := s.LookupChainIn(ctx, nil, "", steps("RUN x", "RUN a"))
			return err
		}, 0, 1},
		{"an empty chain counts nothing", func(s StepCache) error {
			_, err := s.LookupChainIn(ctx, nil, "", nil)
			return err
		}, 0, 0},
		{"a failed chain counts nothing", func(s StepCache) error {
			if _, err := s.LookupChainIn(ctx, nil, "", steps("RUN a", "FAIL")); !errors.Is(err, cache.ErrUnavailable) {
				return fmt.Errorf("got %v, want the failure passed through", err)
			}
			return nil
		}, 0, 0},
		{"a record is no lookup", func(s StepCache) error {
			_, err := s.RecordStepIn(ctx, "", "", steps("RUN c")[0], nil, nil)
			return err
		}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := NewSteps(reg)
			if err != nil {
				t.Fatal(err)
			}
			inner := &fakeSteps{cached: map[string]bool{"RUN a": true, "RUN b": true}}
			if err := tt.call(m.Wrap(inner)); err != nil {
				t.Fatal(err)
			}
			if got := value(t, reg, "cairn_step_lookups_total", map[string]string{"result": "hit"}); got != tt.hit {
				t.Errorf("hits = %v, want %v", got, tt.hit)
			}
			if got := value(t, reg, "cairn_step_lookups_total", map[string]string{"result": "miss"}); got != tt.miss {
				t.Errorf("misses = %v, want %v", got, tt.miss)
			}
		})
	}
}

func TestStepsDelegates(t *testing.T) {
	ctx := context.Background()
	m, err := NewSteps(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	inner := &fakeSteps{cached: map[string]bool{}}
	s := m.Wrap(inner)
	if _, err := s.RecordStepIn(ctx, "", "", steps("RUN c")[0], nil, nil); err != nil || inner.recorded != 1 {
		t.Fatalf("RecordStep: %v, %d records reached the store; want 1", err, inner.recorded)
	}
	rec, err := s.LookupStepIn(ctx, nil, "", steps("RUN c")[0])
	if err != nil || rec.Step.Instruction != "RUN c" {
		t.Fatalf("LookupStep after RecordStep: %+v, %v", rec, err)
	}
	if (*Steps)(nil).Wrap(inner) != StepCache(inner) {
		t.Error("a nil *Steps does not return the store unchanged")
	}
}

// TestStepsShareOneRegistry checks that two fronts on one registry count
// into the same series instead of failing to register.
func TestStepsShareOneRegistry(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	inner := &fakeSteps{cached: map[string]bool{"RUN a": true}}
	for i := range 2 {
		m, err := NewSteps(reg)
		if err != nil {
			t.Fatalf("NewSteps #%d: %v", i+1, err)
		}
		if _, err := m.Wrap(inner).LookupStepIn(ctx, nil, "", steps("RUN a")[0]); err != nil {
			t.Fatal(err)
		}
	}
	if got := value(t, reg, "cairn_step_lookups_total", map[string]string{"result": "hit"}); got != 2 {
		t.Errorf("hits = %v, want 2 (one per front)", got)
	}
	// Another collector under the name is a conflict, not shared.
	other := prometheus.NewRegistry()
	other.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "cairn_step_lookups_total", Help: "x"}))
	if _, err := NewSteps(other); err == nil {
		t.Error("NewSteps over a different collector of the same name succeeded")
	}
}
