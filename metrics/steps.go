package metrics

import (
	"context"
	"errors"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/stepkey"
)

// StepCache is the step cache Steps decorates: the interface every front
// that looks up steps declares (server.StepCache has the same methods), and
// *cache.Cache implements.
type StepCache interface {
	LookupStepIn(ctx context.Context, namespaces []string, parent digest.Digest, s stepkey.Step) (cache.StepRecord, error)
	LookupChainIn(ctx context.Context, namespaces []string, base digest.Digest, steps []stepkey.Step) ([]cache.StepRecord, error)
	RecordStepIn(ctx context.Context, namespace string, parent digest.Digest, s stepkey.Step, layer *cache.LayerRef, config []byte) (cache.StepRecord, error)
}

// Steps holds the step-lookup counters. Wrap decorates a StepCache with
// them, so that every front (gRPC, and the registry to come) counts hits
// and misses the same way: in one place, below the protocol. Several
// decorators may share one Steps. It is safe for concurrent use.
type Steps struct {
	hit, miss prometheus.Counter
}

// NewSteps registers the step-lookup counter with reg:
//
//   - cairn_step_lookups_total{result}: steps looked up, result "hit" or
//     "miss". A LookupStep is one hit or one miss; a LookupChain counts each
//     hit, and the miss that ends the walk if it ends before the last step.
//     Lookups that fail (bad input, an index that cannot serve) count
//     neither: they say nothing about the cache's contents.
//
// Calling NewSteps again with the same reg (a second front in the same
// process) shares the counter already registered.
func NewSteps(reg prometheus.Registerer) (*Steps, error) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cairn_step_lookups_total",
		Help: "Steps looked up, by result (hit or miss).",
	}, []string{"result"})
	if err := reg.Register(vec); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, err
		}
		existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, err
		}
		vec = existing
	}
	// Both results exist from the start, so that rate() sees a zero.
	return &Steps{hit: vec.WithLabelValues("hit"), miss: vec.WithLabelValues("miss")}, nil
}

// Wrap returns inner decorated with m's counters. A nil m returns inner
// unchanged.
func (m *Steps) Wrap(inner StepCache) StepCache {
	if m == nil {
		return inner
	}
	return &countedSteps{inner: inner, m: m}
}

// countedSteps is the decorator Wrap returns.
type countedSteps struct {
	inner StepCache
	m     *Steps
}

// LookupStepIn counts a hit, or a miss for cache.ErrNotFound.
func (s *countedSteps) LookupStepIn(ctx context.Context, namespaces []string, parent digest.Digest, step stepkey.Step) (cache.StepRecord, error) {
	rec, err := s.inner.LookupStepIn(ctx, namespaces, parent, step)
	switch {
	case err == nil:
		s.m.hit.Inc()
	case errors.Is(err, cache.ErrNotFound):
		s.m.miss.Inc()
	}
	return rec, err
}

// LookupChainIn counts each hit, and one miss if the walk stopped early.
func (s *countedSteps) LookupChainIn(ctx context.Context, namespaces []string, base digest.Digest, steps []stepkey.Step) ([]cache.StepRecord, error) {
	recs, err := s.inner.LookupChainIn(ctx, namespaces, base, steps)
	if err != nil {
		return recs, err
	}
	if len(recs) > 0 {
		s.m.hit.Add(float64(len(recs)))
	}
	if len(recs) < len(steps) {
		s.m.miss.Inc()
	}
	return recs, nil
}

// RecordStepIn delegates; records are not lookups.
func (s *countedSteps) RecordStepIn(ctx context.Context, namespace string, parent digest.Digest, step stepkey.Step, layer *cache.LayerRef, config []byte) (cache.StepRecord, error) {
	return s.inner.RecordStepIn(ctx, namespace, parent, step, layer, config)
}
