package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// rpcMetrics are the server's Prometheus metrics. A nil *rpcMetrics records
// nothing, so the handlers need no checks.
type rpcMetrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	received  prometheus.Counter
	sent      prometheus.Counter
	transfers prometheus.Gauge
}

// newRPCMetrics registers the server's metrics with reg:
//
//   - cairn_rpc_requests_total{method,code}: finished RPCs by full method
//     name and gRPC code.
//   - cairn_rpc_duration_seconds{method}: RPC latency (streams: the whole
//     stream).
//   - cairn_bytes_received_total, cairn_bytes_sent_total: layer and chunk
//     data bytes received and sent (payload, not protobuf framing).
//   - cairn_transfers_in_flight: data-carrying calls holding a transfer
//     slot (Options.MaxTransfers); at the limit, more calls wait.
//
// Step hits and misses are not counted here but by the metrics.Steps
// decorator around the StepCache (cairn_step_lookups_total), so that every
// front counts them alike.
func newRPCMetrics(reg prometheus.Registerer) (*rpcMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &rpcMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cairn_rpc_requests_total",
			Help: "Finished gRPC calls by method and code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cairn_rpc_duration_seconds",
			Help: "gRPC call latency by method; for streams, the whole stream.",
			// 0.25 ms (a lookup) to ~17 min (a large push over a slow link).
			Buckets: prometheus.ExponentialBuckets(0.00025, 4, 12),
		}, []string{"method"}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_bytes_received_total",
			Help: "Layer and chunk data bytes received from clients.",
		}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cairn_bytes_sent_total",
			Help: "Layer and chunk data bytes sent to clients.",
		}),
		transfers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cairn_transfers_in_flight",
			Help: "Data-carrying calls (push, pull, chunk upload and download, commit) in progress.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.received, m.sent, m.transfers} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *rpcMetrics) observe(method string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	m.duration.WithLabelValues(method).Observe(time.Since(start).Seconds())
}

func (m *rpcMetrics) addReceived(n int) {
	if m != nil && n > 0 {
		m.received.Add(float64(n))
	}
}

func (m *rpcMetrics) addSent(n int) {
	if m != nil && n > 0 {
		m.sent.Add(float64(n))
	}
}

func (m *rpcMetrics) transfer(delta float64) {
	if m != nil {
		m.transfers.Add(delta)
	}
}

// unary is the metrics interceptor for unary calls.
func (m *rpcMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.observe(info.FullMethod[1:], start, err)
	return resp, err
}

// stream is the metrics interceptor for streaming calls.
func (m *rpcMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	m.observe(info.FullMethod[1:], start, err)
	return err
}
