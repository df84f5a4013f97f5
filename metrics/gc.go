package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairnbuild/cairn/cache"
)

// GCCollector reports what cache.GCStats counts: garbage collections run
// (and failed), bytes freed, packs deleted and rewritten, chunk entries
// deleted, the compaction's progress (packs compacted, the uncompressed
// chunk bytes they held, the bytes of the packs written), and the last
// run's duration and end. Read on each scrape.
type GCCollector struct {
	stats                                     func() cache.GCStats
	runs, failures, freed, deleted, rewritten *prometheus.Desc
	chunks, duration, lastEnd                 *prometheus.Desc
	compacted, compactRead, compactWritten    *prometheus.Desc
}

// NewGCCollector returns a collector over stats.
func NewGCCollector(stats func() cache.GCStats) *GCCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &GCCollector{
		stats:          stats,
		runs:           d("cairn_gc_runs_total", "Garbage collections run (not dry runs), in the background or asked for."),
		failures:       d("cairn_gc_failures_total", "Garbage collections that failed part way (the next one finishes the job)."),
		freed:          d("cairn_gc_freed_bytes_total", "Bytes of packs deleted (the packs rewrites and compactions write are not subtracted: a counter only grows)."),
		deleted:        d("cairn_gc_packs_deleted_total", "Packs deleted: wholly dead, or marked and past their second grace period."),
		rewritten:      d("cairn_gc_packs_rewritten_total", "Mostly dead packs whose live chunks were copied to a new pack."),
		chunks:         d("cairn_gc_chunks_deleted_total", "Dead chunk entries deleted from the index."),
		duration:       d("cairn_gc_last_duration_seconds", "How long the last garbage collection took."),
		lastEnd:        d("cairn_gc_last_end_timestamp_seconds", "When the last garbage collection ended (Unix time)."),
		compacted:      d("cairn_compaction_packs_total", "Packs compacted: their live chunks rewritten into frames of several, compressed harder."),
		compactRead:    d("cairn_compaction_read_bytes_total", "Uncompressed bytes of the chunks compaction rewrote into frames."),
		compactWritten: d("cairn_compaction_written_bytes_total", "Bytes of the packs compaction wrote."),
	}
}

// Describe implements prometheus.Collector.
func (c *GCCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.runs, c.failures, c.freed, c.deleted, c.rewritten, c.chunks, c.duration, c.lastEnd,
		c.compacted, c.compactRead, c.compactWritten} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *GCCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	counter(c.runs, s.Runs)
	counter(c.failures, s.Failures)
	counter(c.freed, s.DeletedBytes)
	counter(c.deleted, s.DeletedPacks)
	counter(c.rewritten, s.RewrittenPacks)
	counter(c.chunks, s.DeletedChunks)
	counter(c.compacted, s.CompactedPacks)
	counter(c.compactRead, s.CompactRead)
	counter(c.compactWritten, s.CompactWritten)
	ch <- prometheus.MustNewConstMetric(c.duration, prometheus.GaugeValue, s.LastDuration.Seconds())
	if !s.LastEnd.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.lastEnd, prometheus.GaugeValue, float64(s.LastEnd.UnixNano())/1e9)
	}
}
