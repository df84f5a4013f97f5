package metrics

import "github.com/prometheus/client_golang/prometheus"

// NewDivergenceCollector exports cairn_step_divergences_total: step records
// refused since the server started because their namespace held a record
// for the same step naming another layer (records are immutable). A
// rising count is a step that is not reproducible, or someone trying to
// replace a cached result; cairn lookup shows which. count is
// cache.Cache.Divergences.
func NewDivergenceCollector(count func() int64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "cairn_step_divergences_total",
		Help: "Step records refused because their namespace holds another layer for the same step.",
	}, func() float64 { return float64(count()) })
}
