package lookup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// The benchmarks' data set: benchChains chains of benchDepth steps, so
// BenchmarkLookupStep cycles through 1000 distinct records.
const (
	benchChains = 50
	benchDepth  = 20
)

// shared is the one server of the benchmarks, started on first use and
// stopped by TestMain.
var shared struct {
	once sync.Once
	err  error
	dir  string
	stop func() error
	conn *grpc.ClientConn
	ds   *dataset
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.stop != nil {
		shared.conn.Close()
		if err := shared.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the benchmark server:", err)
			code = 1
		}
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// fixture returns the shared server's connection and data set, starting
// and populating it on first use.
func fixture(b *testing.B) (*grpc.ClientConn, *dataset) {
	b.Helper()
	shared.once.Do(func() {
		shared.err = func() error {
			dir, err := os.MkdirTemp("", "cairn-bench-lookup-")
			if err != nil {
				return err
			}
			shared.dir = dir
			addr, stop, err := startServer(dir)
			if err != nil {
				return err
			}
			conn, err := dial(addr)
			if err != nil {
				stop()
				return err
			}
			shared.stop, shared.conn = stop, conn
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			shared.ds, err = populate(ctx, conn, benchChains, benchDepth)
			return err
		}()
	})
	if shared.err != nil {
		b.Fatal(shared.err)
	}
	return shared.conn, shared.ds
}

// emptyStats holds the empty call's figures at each concurrency, from the
// run just before the hit run that divides by them.
var emptyStats = map[int]stats{}

// BenchmarkLookupStep measures, at each concurrency, the empty unary call
// (Health/Check) and then cache-hit LookupStep calls on the same server and
// connection; see the package doc.
func BenchmarkLookupStep(b *testing.B) {
	conn, ds := fixture(b)
	health := healthpb.NewHealthClient(conn)
	steps := cairnv1.NewCacheServiceClient(conn)
	reqs := make([]*cairnv1.LookupStepRequest, len(ds.all))
	for i, l := range ds.all {
		reqs[i] = &cairnv1.LookupStepRequest{Parent: l.parent, Step: l.step}
	}
	empty := &healthpb.HealthCheckRequest{}
	for _, conc := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("c=%d/empty", conc), func(b *testing.B) {
			emptyStats[conc] = run(b, conc, func(ctx context.Context, i int) error {
				resp, err := health.Check(ctx, empty)
				if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					err = fmt.Errorf("health: %v", resp.GetStatus())
				}
				return err
			})
		})
		b.Run(fmt.Sprintf("c=%d/hit", conc), func(b *testing.B) {
			hit := run(b, conc, func(ctx context.Context, i int) error {
				req := reqs[i%len(reqs)]
				resp, err := steps.LookupStep(ctx, req)
				if err != nil {
					return err
				}
				if !resp.GetHit() {
					return fmt.Errorf("%q on %q: a miss", req.GetStep().GetInstruction(), req.GetParent())
				}
				return nil
			})
			if e, ok := emptyStats[conc]; ok {
				b.ReportMetric(hit.rate/e.rate, "hit/empty")
				if hit.cpu > 0 {
					b.ReportMetric(e.cpu/hit.cpu, "hit/empty-cpu")
				}
			}
		})
	}
}

// singles3Stats holds the three singles' figures at each concurrency, for
// the chain run that follows.
var singles3Stats = map[int]stats{}

// BenchmarkLookupChain compares one LookupChain of 20 steps with three
// LookupStep calls in a row, all hits; see the package doc.
func BenchmarkLookupChain(b *testing.B) {
	conn, ds := fixture(b)
	steps := cairnv1.NewCacheServiceClient(conn)
	chainReqs := make([]*cairnv1.LookupChainRequest, len(ds.chains))
	for n, c := range ds.chains {
		req := &cairnv1.LookupChainRequest{}
		for _, l := range c {
			req.Steps = append(req.Steps, l.step)
		}
		chainReqs[n] = req
	}
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("c=%d/singles3", conc), func(b *testing.B) {
			singles3Stats[conc] = run(b, conc, func(ctx context.Context, i int) error {
				chain := ds.chains[i%len(ds.chains)]
				parent := ""
				for _, l := range chain[:3] {
					resp, err := steps.LookupStep(ctx, &cairnv1.LookupStepRequest{Parent: parent, Step: l.step})
					if err != nil {
						return err
					}
					if !resp.GetHit() {
						return fmt.Errorf("%q on %q: a miss", l.step.GetInstruction(), parent)
					}
					parent = resp.GetRecord().GetNextParent()
				}
				return nil
			})
		})
		b.Run(fmt.Sprintf("c=%d/chain20", conc), func(b *testing.B) {
			chain := run(b, conc, func(ctx context.Context, i int) error {
				req := chainReqs[i%len(chainReqs)]
				resp, err := steps.LookupChain(ctx, req)
				if err != nil {
					return err
				}
				if got := len(resp.GetHits()); got != len(req.GetSteps()) {
					return fmt.Errorf("chain of %d steps: %d hits", len(req.GetSteps()), got)
				}
				return nil
			})
			if s, ok := singles3Stats[conc]; ok {
				b.ReportMetric(s.rate/chain.rate, "chain/singles3")
				b.ReportMetric(float64(chain.p50)/float64(s.p50), "chain/singles3-p50")
			}
		})
	}
}

// run calls op b.N times, the i-th call with i, from conc goroutines that
// take the next i as they finish the last (a closed loop: conc calls are
// always in flight). It reports calls/s, the p50 and p99 latency of one
// call in µs (ns/op is then the inverse of the throughput, not a latency)
// and the CPU time of the whole process (client and server) per call, the
// figure that other load on the machine disturbs least, and returns them.
// The first error fails the benchmark.
func run(b *testing.B, conc int, op func(ctx context.Context, i int) error) stats {
	b.Helper()
	b.ReportAllocs()
	ctx := context.Background()
	lat := make([][]time.Duration, conc)
	var (
		next   atomic.Int64
		errMu  sync.Mutex
		errAll error
		wg     sync.WaitGroup
	)
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	for g := range conc {
		wg.Go(func() {
			ds := make([]time.Duration, 0, b.N/conc+1)
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					break
				}
				t0 := time.Now()
				if err := op(ctx, i); err != nil {
					errMu.Lock()
					errAll = errors.Join(errAll, err)
					errMu.Unlock()
					next.Store(int64(b.N)) // stop the others
					break
				}
				ds = append(ds, time.Since(t0))
			}
			lat[g] = ds
		})
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer()
	if errAll != nil {
		b.Fatal(errAll)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	st := stats{rate: float64(b.N) / elapsed.Seconds(), p50: percentile(all, 0.50)}
	b.ReportMetric(st.rate, "calls/s")
	b.ReportMetric(float64(st.p50)/1e3, "p50-us")
	b.ReportMetric(float64(percentile(all, 0.99))/1e3, "p99-us")
	if cpu > 0 {
		st.cpu = float64(cpu) / 1e3 / float64(b.N)
		b.ReportMetric(st.cpu, "cpu-us/call")
	}
	return st
}

// stats are the figures of one run that a later run divides by.
type stats struct {
	rate float64       // calls/s
	p50  time.Duration // median latency
	cpu  float64       // process CPU µs per call; 0: not measured
}

// percentile returns the q-quantile of sorted (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
