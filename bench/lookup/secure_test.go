package lookup

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/client"
	"github.com/cairnbuild/cairn/internal/tlsfiles"
	"github.com/cairnbuild/cairn/internal/tlsfiles/tlstest"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/server"
)

// The knobs of BenchmarkLookupSecure (issue 16: lookups with TLS and a
// token against lookups without them, in the same run).
var (
	secureRounds   = flag.Int("secure.rounds", 5, "BenchmarkLookupSecure: rounds, each running every variant once")
	secureSlice    = flag.Duration("secure.slice", time.Second, "BenchmarkLookupSecure: how long each variant runs in a round")
	secureConns    = flag.Int("secure.conns", 4, "BenchmarkLookupSecure: client connections per variant, the callers spread over them")
	secureConc     = flag.Int("secure.conc", 64, "BenchmarkLookupSecure: concurrent callers")
	secureVariants = flag.String("secure.variants", "", "BenchmarkLookupSecure: comma-separated variants to run (default all: plain,tls,token,tls+token); for a profile of one")
)

// secureVariant is one way of reaching the same cache: over TLS or not,
// with a token (and a server that checks it) or not.
type secureVariant struct {
	name       string
	tls, token bool
}

var secureVariants4 = []secureVariant{
	{"plain", false, false},
	{"tls", true, false},
	{"token", false, true},
	{"tls+token", true, true},
}

// secureEnv is one cache behind four servers, one per variant, each on its
// own port of 127.0.0.1, and the clients' connections to them.
type secureEnv struct {
	ds         *dataset
	addr       map[string]string
	conns      map[string][]*grpc.ClientConn
	token      string
	caFile     string
	handshakes map[string]*atomic.Int64 // TLS handshakes each TLS server began
	stop       func() error
}

// startSecure assembles the servers as `cairn serve` does: the fs backend
// and a Badger index in dir; for the TLS variants the certificate files of
// package tlsfiles (ECDSA P-256 from tlstest, reloaded on change) and
// tlsfiles.Server.Config() as server.Options.TLS; for the token variants a
// credentials file of one token that may read and write everywhere
// (auth.ParseConfig, auth.New) as server.Options.Auth. The variants without
// a token run with Auth nil, which is the server's allow-all default: the
// same interceptor, the anonymous identity. The data set is recorded
// through the plain server. Each variant gets conns connections.
func startSecure(tb testing.TB, dir string, chains, depth, conns int) (*secureEnv, error) {
	ctx := context.Background()
	st, err := fs.New(filepath.Join(dir, "blobs"))
	if err != nil {
		return nil, err
	}
	c, err := cache.Open(ctx, cache.Options{Dir: filepath.Join(dir, "index"), Backend: st})
	if err != nil {
		st.Close()
		return nil, err
	}
	e := &secureEnv{addr: map[string]string{}, conns: map[string][]*grpc.ClientConn{}, handshakes: map[string]*atomic.Int64{}}
	var (
		servers []*server.Server
		served  []chan error
	)
	e.stop = func() error {
		var errs []error
		for _, cs := range e.conns {
			for _, cc := range cs {
				cc.Close()
			}
		}
		for i, srv := range servers {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			srv.Shutdown(sctx)
			cancel()
			errs = append(errs, <-served[i])
		}
		return errors.Join(append(errs, c.Close(), st.Close())...)
	}
	fail := func(err error) (*secureEnv, error) {
		e.stop()
		return nil, err
	}

	ca := tlstest.NewCA(tb, "bench CA")
	certFile, keyFile := ca.Server(tb, "bench", "127.0.0.1").Write(tb, dir, "server")
	e.caFile = ca.WriteCA(tb, dir, "ca")
	files, err := tlsfiles.NewServer(tlsfiles.Options{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		return fail(err)
	}
	token, sum, err := auth.NewToken()
	if err != nil {
		return fail(err)
	}
	e.token = token
	acfg, err := auth.ParseConfig(fmt.Appendf(nil, "tokens:\n  - name: bench\n    sha256: %s\n    scopes:\n      - {actions: [read, write], namespaces: [\"*\"]}\n", sum))
	if err != nil {
		return fail(err)
	}
	authn, err := auth.New(acfg, auth.Options{})
	if err != nil {
		return fail(err)
	}

	for _, v := range secureVariants4 {
		opts := server.Options{Registerer: prometheus.NewRegistry()}
		if v.tls {
			cfg := files.Config()
			n := new(atomic.Int64)
			e.handshakes[v.name] = n
			next := cfg.GetConfigForClient
			cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				n.Add(1)
				return next(h)
			}
			opts.TLS = cfg
		}
		if v.token {
			opts.Auth = authn
		}
		srv, err := server.New(c, opts)
		if err != nil {
			return fail(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fail(err)
		}
		ch := make(chan error, 1)
		go func() { ch <- srv.Serve(lis) }()
		servers, served = append(servers, srv), append(served, ch)
		e.addr[v.name] = lis.Addr().String()
	}

	for _, v := range secureVariants4 {
		for range conns {
			cc, err := e.dial(v, v.tls, v.token)
			if err != nil {
				return fail(err)
			}
			e.conns[v.name] = append(e.conns[v.name], cc)
		}
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if e.ds, err = populate(pctx, e.conns["plain"][0], chains, depth); err != nil {
		return fail(err)
	}
	return e, nil
}

// dial connects to v's server, over TLS (verified against the bench CA,
// as `cairn --tls-ca` does) and with the token only if asked, so that a
// test can check that the server refuses what it should.
func (e *secureEnv) dial(v secureVariant, useTLS, useToken bool) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if useTLS {
		cfg, err := tlsfiles.Client(tlsfiles.ClientOptions{CAFile: e.caFile})
		if err != nil {
			return nil, err
		}
		opts = []grpc.DialOption{client.WithTLS(cfg)}
	}
	if useToken && useTLS {
		opts = append(opts, client.WithToken(e.token))
	} else if useToken {
		opts = append(opts, client.WithTokenOverPlaintext(e.token))
	}
	return grpc.NewClient("passthrough:///"+e.addr[v.name], opts...)
}

// secureOp is one measured operation: a LookupStep hit, or a LookupChain
// of a whole recorded chain, all hits.
type secureOp struct {
	name string
	op   func(ctx context.Context, cc cairnv1.CacheServiceClient, i int) error
}

func secureOps(ds *dataset) []secureOp {
	stepReqs := make([]*cairnv1.LookupStepRequest, len(ds.all))
	for i, l := range ds.all {
		stepReqs[i] = &cairnv1.LookupStepRequest{Parent: l.parent, Step: l.step}
	}
	chainReqs := make([]*cairnv1.LookupChainRequest, len(ds.chains))
	for n, c := range ds.chains {
		req := &cairnv1.LookupChainRequest{}
		for _, l := range c {
			req.Steps = append(req.Steps, l.step)
		}
		chainReqs[n] = req
	}
	return []secureOp{
		{"step", func(ctx context.Context, cc cairnv1.CacheServiceClient, i int) error {
			req := stepReqs[i%len(stepReqs)]
			resp, err := cc.LookupStep(ctx, req)
			if err != nil {
				return err
			}
			if !resp.GetHit() {
				return fmt.Errorf("%q on %q: a miss", req.GetStep().GetInstruction(), req.GetParent())
			}
			return nil
		}},
		{fmt.Sprintf("chain%d", len(chainReqs[0].GetSteps())), func(ctx context.Context, cc cairnv1.CacheServiceClient, i int) error {
			req := chainReqs[i%len(chainReqs)]
			resp, err := cc.LookupChain(ctx, req)
			if err != nil {
				return err
			}
			if got := len(resp.GetHits()); got != len(req.GetSteps()) {
				return fmt.Errorf("chain of %d steps: %d hits", len(req.GetSteps()), got)
			}
			return nil
		}},
	}
}

// slice is one variant's share of a round.
type slice struct {
	rate     float64 // calls/s
	cpu      float64 // process CPU µs per call; 0: not measured
	p50, p99 time.Duration
}

// timed runs op for d from conc goroutines in a closed loop, goroutine g
// on clients[g%len(clients)], and returns its figures.
func timed(conc int, d time.Duration, clients []cairnv1.CacheServiceClient, op func(context.Context, cairnv1.CacheServiceClient, int) error) (slice, error) {
	ctx := context.Background()
	lat := make([][]time.Duration, conc)
	var (
		next  atomic.Int64
		stop  atomic.Bool
		errMu sync.Mutex
		errs  error
		wg    sync.WaitGroup
	)
	start, cpu0 := time.Now(), cpuTime()
	deadline := start.Add(d)
	for g := range conc {
		cc := clients[g%len(clients)]
		wg.Go(func() {
			ls := make([]time.Duration, 0, 4096)
			for !stop.Load() {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				if err := op(ctx, cc, int(next.Add(1)-1)); err != nil {
					errMu.Lock()
					errs = errors.Join(errs, err)
					errMu.Unlock()
					stop.Store(true)
					break
				}
				ls = append(ls, time.Since(t0))
			}
			lat[g] = ls
		})
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	if errs != nil {
		return slice{}, errs
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	s := slice{rate: float64(len(all)) / elapsed.Seconds(), p50: percentile(all, 0.50), p99: percentile(all, 0.99)}
	if cpu > 0 && len(all) > 0 {
		s.cpu = float64(cpu) / 1e3 / float64(len(all))
	}
	return s, nil
}

// loadavg is the first field of /proc/loadavg, or "?".
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkLookupSecure measures cache-hit lookups over the four ways of
// reaching the same cache in the same process: plain, TLS only, token only
// and TLS with a token (issue 16: TLS+token at ≥ 0.8× plain). The
// variants run in rounds, each variant for -secure.slice per round, the
// first variant of round r being the r-th (so that no variant always runs
// first or last), so that a change in the machine's load touches every
// variant alike; a warm-up slice of a fifth as long runs every variant
// first (connections, TLS handshakes). It reports each variant's median
// calls/s and CPU µs per call over the rounds, and the median over the
// rounds of its per-round rate ratio to plain (`<v>/plain`) and of plain's
// CPU per call over its own (`<v>/plain-cpu`, the steadier figure on a
// loaded machine); the per-round figures and the load average (the first
// field of /proc/loadavg before and after the round) are printed.
// Sub-benchmarks: step (LookupStep) and chain20 (LookupChain of a whole
// 20-step chain; calls/s are chains/s).
//
// Run it once per process, with -benchtime 1x (it ignores b.N), e.g.:
//
//	go test ./bench/lookup -run '^$' -bench LookupSecure -benchtime 1x
func BenchmarkLookupSecure(b *testing.B) {
	dir := b.TempDir()
	e, err := startSecure(b, dir, benchChains, benchDepth, *secureConns)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := e.stop(); err != nil {
			b.Errorf("stop: %v", err)
		}
	})
	vs := secureVariants4
	if *secureVariants != "" {
		vs = nil
		for name := range strings.SplitSeq(*secureVariants, ",") {
			i := slices.IndexFunc(secureVariants4, func(v secureVariant) bool { return v.name == name })
			if i < 0 {
				b.Fatalf("-secure.variants: unknown variant %q", name)
			}
			vs = append(vs, secureVariants4[i])
		}
	}
	clients := map[string][]cairnv1.CacheServiceClient{}
	for _, v := range vs {
		for _, cc := range e.conns[v.name] {
			clients[v.name] = append(clients[v.name], cairnv1.NewCacheServiceClient(cc))
		}
	}
	conc, rounds, d := *secureConc, *secureRounds, *secureSlice
	b.Logf("%d callers on %d connections per variant, %d rounds of %v per variant, GOMAXPROCS %d, load %s",
		conc, *secureConns, rounds, d, runtime.GOMAXPROCS(0), loadavg())
	for _, o := range secureOps(e.ds) {
		b.Run(o.name, func(b *testing.B) {
			for _, v := range vs { // warm-up
				if _, err := timed(conc, d/5, clients[v.name], o.op); err != nil {
					b.Fatalf("%s: %v", v.name, err)
				}
			}
			res := map[string][]slice{}
			for r := range rounds {
				load := loadavg()
				line := []string{}
				for k := range vs {
					v := vs[(r+k)%len(vs)]
					s, err := timed(conc, d, clients[v.name], o.op)
					if err != nil {
						b.Fatalf("%s: %v", v.name, err)
					}
					res[v.name] = append(res[v.name], s)
				}
				for _, v := range vs {
					s := res[v.name][r]
					f := fmt.Sprintf("%s %.0f/s %.1fµs-cpu p50 %.0fµs p99 %.0fµs", v.name, s.rate, s.cpu, float64(s.p50)/1e3, float64(s.p99)/1e3)
					if p, ok := res["plain"]; ok && v.name != "plain" {
						f += fmt.Sprintf(" (%.2f×", s.rate/p[r].rate)
						if s.cpu > 0 {
							f += fmt.Sprintf(", cpu %.2f×", p[r].cpu/s.cpu)
						}
						f += ")"
					}
					line = append(line, f)
				}
				// Printed, not logged: the testing package keeps only the
				// first lines of a benchmark's log.
				fmt.Printf("%s round %d (load %s → %s): %s\n", b.Name(), r+1, load, loadavg(), strings.Join(line, "; "))
			}
			for _, v := range vs {
				var rate, cpu, ratio, cpuRatio []float64
				for r, s := range res[v.name] {
					rate, cpu = append(rate, s.rate), append(cpu, s.cpu)
					if p, ok := res["plain"]; ok {
						ratio = append(ratio, s.rate/p[r].rate)
						if s.cpu > 0 {
							cpuRatio = append(cpuRatio, p[r].cpu/s.cpu)
						}
					}
				}
				b.ReportMetric(median(rate), v.name+"-calls/s")
				if median(cpu) > 0 {
					b.ReportMetric(median(cpu), v.name+"-cpu-us/call")
				}
				if v.name != "plain" && len(ratio) > 0 {
					b.ReportMetric(median(ratio), v.name+"/plain")
					if len(cpuRatio) > 0 {
						b.ReportMetric(median(cpuRatio), v.name+"/plain-cpu")
					}
				}
			}
			for name, n := range e.handshakes {
				if slices.ContainsFunc(vs, func(v secureVariant) bool { return v.name == name }) {
					b.Logf("%s: %d TLS handshakes on %d connections", name, n.Load(), *secureConns)
				}
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// TestSecureRoundTrip runs BenchmarkLookupSecure's setup small: every
// variant must answer a recorded step with a hit, through every operation;
// the token server must refuse a call without the token, and a TLS server
// a plaintext client; each TLS connection must have made one handshake.
func TestSecureRoundTrip(t *testing.T) {
	const conns = 2
	e, err := startSecure(t, t.TempDir(), 2, 6, conns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, v := range secureVariants4 {
		for _, o := range secureOps(e.ds) {
			for i, cc := range e.conns[v.name] {
				for n := range 3 {
					if err := o.op(ctx, cairnv1.NewCacheServiceClient(cc), i+n); err != nil {
						t.Errorf("%s, connection %d, %s: %v", v.name, i, o.name, err)
					}
				}
			}
		}
		if n := e.handshakes[v.name]; n != nil && n.Load() != conns {
			t.Errorf("%s: %d TLS handshakes on %d connections", v.name, n.Load(), conns)
		}
	}
	req := &cairnv1.LookupStepRequest{Parent: e.ds.all[0].parent, Step: e.ds.all[0].step}
	for _, c := range []struct {
		v          secureVariant
		tls, token bool
		code       codes.Code
	}{
		{secureVariants4[2], false, false, codes.Unauthenticated},
		{secureVariants4[3], true, false, codes.Unauthenticated},
		{secureVariants4[1], false, false, codes.Unavailable},
		{secureVariants4[3], false, true, codes.Unavailable},
	} {
		cc, err := e.dial(c.v, c.tls, c.token)
		if err != nil {
			t.Fatal(err)
		}
		_, err = cairnv1.NewCacheServiceClient(cc).LookupStep(ctx, req)
		cc.Close()
		if status.Code(err) != c.code {
			t.Errorf("%s server, client TLS %v token %v: %v, want %v", c.v.name, c.tls, c.token, err, c.code)
		}
	}
}
