package metrics

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairnbuild/cairn/cache"
)

// DefaultStatsInterval is how long a CacheCollector reuses one cache.Stats
// walk: Stats walks the whole index, so two scrapes a few seconds apart (or
// two Prometheus servers) must not each pay for one.
const DefaultStatsInterval = 30 * time.Second

// statsTimeout bounds one Stats walk made for a scrape.
const statsTimeout = 10 * time.Second

// StatsFunc returns what the cache holds; (*cache.Cache).Stats is one.
type StatsFunc func(ctx context.Context) (cache.Stats, error)

// CacheCollector is a prometheus.Collector reporting cache.Stats as gauges:
//
//   - cairn_layers, cairn_chunks, cairn_steps: what the index holds.
//   - cairn_logical_bytes: the sum of the sizes of all layers, as pushed.
//   - cairn_stored_bytes: the compressed bytes of all chunks the index knows.
//   - cairn_dedup_ratio: logical over stored bytes (0 while nothing is
//     stored).
//   - cairn_quarantined_chunks: chunks a read or a verify found bad that
//     no push has supplied again (alert on it above 0).
//   - cairn_tier_stored_bytes and cairn_tier_chunks, with a tier label:
//     the stored bytes and the chunks of the ingest tier (records of one
//     chunk, as pushes write them) and of the compacted tier (frames of
//     several, as compaction writes them). The tiers' bytes sum to
//     cairn_stored_bytes, their chunks to cairn_chunks.
//
// A walk's result is reused for Interval; a walk that fails is logged and
// the gauges are left out of that scrape. It is safe for concurrent use.
type CacheCollector struct {
	stats    StatsFunc
	interval time.Duration
	log      *slog.Logger

	layers, chunks, steps, logical, stored, ratio, quarantined *prometheus.Desc
	tierStored, tierChunks                                     *prometheus.Desc

	mu   sync.Mutex
	last cache.Stats
	at   time.Time
}

// NewCacheCollector returns a collector over stats. interval <= 0 means
// DefaultStatsInterval; a nil log discards.
func NewCacheCollector(stats StatsFunc, interval time.Duration, log *slog.Logger) *CacheCollector {
	if interval <= 0 {
		interval = DefaultStatsInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &CacheCollector{
		stats: stats, interval: interval, log: log,
		layers:  prometheus.NewDesc("cairn_layers", "Layers stored.", nil, nil),
		chunks:  prometheus.NewDesc("cairn_chunks", "Distinct chunks stored.", nil, nil),
		steps:   prometheus.NewDesc("cairn_steps", "Step records stored.", nil, nil),
		logical: prometheus.NewDesc("cairn_logical_bytes", "Sum of the sizes of all stored layers, as pushed.", nil, nil),
		stored:  prometheus.NewDesc("cairn_stored_bytes", "Compressed bytes of all stored chunks (their records in packs, headers included).", nil, nil),
		ratio:   prometheus.NewDesc("cairn_dedup_ratio", "Logical bytes over stored bytes (dedup and compression together).", nil, nil),
		quarantined: prometheus.NewDesc("cairn_quarantined_chunks",
			"Chunks whose stored copy a read or a verify found bad, until a push supplies them again.", nil, nil),
		tierStored: prometheus.NewDesc("cairn_tier_stored_bytes",
			"Stored bytes by tier: ingest (records of one chunk, as pushed) or compacted (frames of several, as compaction writes them).", []string{"tier"}, nil),
		tierChunks: prometheus.NewDesc("cairn_tier_chunks",
			"Distinct chunks stored, by tier: ingest (records of one chunk, as pushed) or compacted (frames of several).", []string{"tier"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *CacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.layers, c.chunks, c.steps, c.logical, c.stored, c.ratio, c.quarantined, c.tierStored, c.tierChunks} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *CacheCollector) Collect(ch chan<- prometheus.Metric) {
	s, ok := c.get()
	if !ok {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.layers, float64(s.Layers))
	gauge(c.chunks, float64(s.Chunks))
	gauge(c.steps, float64(s.Steps))
	gauge(c.logical, float64(s.LogicalBytes))
	gauge(c.stored, float64(s.StoredBytes))
	ratio := 0.0
	if s.StoredBytes > 0 {
		ratio = float64(s.LogicalBytes) / float64(s.StoredBytes)
	}
	gauge(c.ratio, ratio)
	gauge(c.quarantined, float64(s.Quarantined))
	gauge(c.tierStored, float64(s.IngestBytes), "ingest")
	gauge(c.tierStored, float64(s.CompactedBytes), "compacted")
	gauge(c.tierChunks, float64(s.IngestChunks), "ingest")
	gauge(c.tierChunks, float64(s.CompactedChunks), "compacted")
}

// get returns the last walk's result if it is fresh, else walks again.
// Concurrent scrapes wait for one walk.
func (c *CacheCollector) get() (cache.Stats, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < c.interval {
		return c.last, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
	defer cancel()
	s, err := c.stats(ctx)
	if err != nil {
		c.log.Warn("cache stats for metrics", "err", err)
		return cache.Stats{}, false
	}
	c.last, c.at = s, time.Now()
	return s, true
}
