package s3

import (
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/backendtest"
)

// TestConformance runs the backend suite against the shared MinIO, each
// subtest in a fresh random prefix of one bucket.
func TestConformance(t *testing.T) {
	opts := backendtest.Options{
		// Enough to cross S3's 1 000-key listing page several times; the
		// suite's default 10 000 puts alone take most of a minute here.
		ListKeys: 2500,
	}
	if testing.Short() {
		opts.ListKeys = 1200
	}
	backendtest.RunWithOptions(t, func(t *testing.T) backend.Store { return newTestStore(t) }, opts)
}

// BenchmarkMinIO measures put and get throughput against the shared MinIO
// (see bench/RESULTS.md for the command and figures).
func BenchmarkMinIO(b *testing.B) {
	backendtest.Bench(b, newTestStore(b))
}

// BenchmarkMinIOUntunedTransport is BenchmarkMinIO with minio-go's default
// transport (16 idle connections per host), to measure what newTransport's
// tuning buys at high concurrency.
func BenchmarkMinIOUntunedTransport(b *testing.B) {
	opts := sharedOptions(b)
	tr, err := minio.DefaultTransport(false)
	if err != nil {
		b.Fatal(err)
	}
	opts.Transport = tr
	backendtest.Bench(b, openStore(b, opts))
}
