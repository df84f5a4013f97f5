package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairnbuild/cairn/cache"
)

// RebuildCollector reports what cache.RebuildStats counts: compressed
// blobs pushed, stored rebuilt or as they came; bytes of rebuilt blobs
// served, by an encoder or from the rebuilt-blob cache; and that cache's
// size. The counters are read on each scrape (they are cheap).
type RebuildCollector struct {
	stats                             func() cache.RebuildStats
	ingest, served, cacheBytes, blobs *prometheus.Desc
	evictions                         *prometheus.Desc
}

// NewRebuildCollector returns a collector over stats.
func NewRebuildCollector(stats func() cache.RebuildStats) *RebuildCollector {
	return &RebuildCollector{
		stats: stats,
		ingest: prometheus.NewDesc("cairn_compressed_blobs_total",
			"Compressed (gzip, zstd) blobs pushed, by how they were stored: rebuilt (content plus encoder) or kept (as they came).", []string{"stored"}, nil),
		served: prometheus.NewDesc("cairn_rebuilt_served_bytes_total",
			"Bytes of compressed blobs stored rebuilt that reads delivered, by source: encoder (rebuilt on the fly) or cache.", []string{"source"}, nil),
		cacheBytes: prometheus.NewDesc("cairn_rebuilt_cache_bytes", "Bytes the rebuilt-blob cache holds.", nil, nil),
		blobs:      prometheus.NewDesc("cairn_rebuilt_cache_blobs", "Blobs the rebuilt-blob cache holds.", nil, nil),
		evictions:  prometheus.NewDesc("cairn_rebuilt_cache_evictions_total", "Blobs the rebuilt-blob cache evicted for room.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *RebuildCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.ingest, c.served, c.cacheBytes, c.blobs, c.evictions} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *RebuildCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(c.ingest, prometheus.CounterValue, float64(s.IngestRebuilt), "rebuilt")
	ch <- prometheus.MustNewConstMetric(c.ingest, prometheus.CounterValue, float64(s.IngestKept), "kept")
	ch <- prometheus.MustNewConstMetric(c.served, prometheus.CounterValue, float64(s.ServedRebuilt), "encoder")
	ch <- prometheus.MustNewConstMetric(c.served, prometheus.CounterValue, float64(s.ServedFromCache), "cache")
	ch <- prometheus.MustNewConstMetric(c.cacheBytes, prometheus.GaugeValue, float64(s.CacheBytes))
	ch <- prometheus.MustNewConstMetric(c.blobs, prometheus.GaugeValue, float64(s.CacheBlobs))
	ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(s.CacheEvictions))
}
