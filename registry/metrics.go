package registry

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts the registry's requests and bytes. A nil *Metrics counts
// nothing.
type Metrics struct {
	requests *prometheus.CounterVec
	in, out  prometheus.Counter
}

// NewMetrics registers the registry metrics with reg:
//
//   - cairn_registry_requests_total{route,method,status}: requests by
//     endpoint kind (blob, upload, manifest, tags, ...), method and status.
//   - cairn_registry_received_bytes_total, cairn_registry_sent_bytes_total:
//     blob and manifest bytes in and out.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_registry_requests_total",
			Help: "Registry API requests by endpoint kind, method and status.",
		}, []string{"route", "method", "status"}),
		in: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_registry_received_bytes_total",
			Help: "Blob bytes received through the registry API.",
		}),
		out: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_registry_sent_bytes_total",
			Help: "Blob and manifest bytes sent through the registry API.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.in, m.out} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// WithMetrics makes h count into m.
func (h *Handler) WithMetrics(m *Metrics) *Handler { h.metrics = m; return h }

func (m *Metrics) observe(route, method string, status int) {
	if m == nil {
		return
	}
	if status == 0 {
		status = 200
	}
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
}

func (m *Metrics) addIn(n int64) {
	if m != nil && n > 0 {
		m.in.Add(float64(n))
	}
}

func (m *Metrics) addOut(n int64) {
	if m != nil && n > 0 {
		m.out.Add(float64(n))
	}
}
