// Package load drives a cairn server with a mix of step lookups, layer
// pushes and layer pulls from N concurrent clients, and reports throughput
// and latency percentiles per kind of operation.
//
// A run is bounded twice: by Options.Duration (no operation starts after
// it) and by Options.MaxOps; it always stops by itself. Before the timed
// part, Run seeds the server with a few layers and step records so that
// pulls and lookups have something to find; the seeding is not measured.
//
// Run talks to the server through the small Target interface; ClientTarget
// adapts the Go client to it, and tests use a fake.
package load

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// Target is what the load runs against. Implementations must be safe for
// concurrent use.
type Target interface {
	// Push stores the size bytes read from r as a layer and returns its ID.
	Push(ctx context.Context, r io.Reader, size int64) (id string, err error)
	// Pull writes the layer id to w and returns the bytes written.
	Pull(ctx context.Context, id string, w io.Writer) (int64, error)
	// Record caches a chain of build steps, the first on scratch and each
	// on the one before, all with the layer id as their result.
	Record(ctx context.Context, chain []string, id string) error
	// Lookup walks a chain of steps from scratch and returns how many of
	// them, from the first, are cached; misses are not errors.
	Lookup(ctx context.Context, chain []string) (hits int, err error)
}

// Op is a kind of operation.
type Op int

// The operations of the mix.
const (
	OpLookup Op = iota
	OpPush
	OpPull
	numOps
)

func (o Op) String() string { return [...]string{"lookup", "push", "pull"}[o] }

// Options configure Run. Zero fields take the documented defaults.
type Options struct {
	Clients  int           // concurrent clients; default 4
	Duration time.Duration // no operation starts after this; default 10s
	MaxOps   int64         // stop after this many operations; default 1 000 000
	// Mix is the relative weight of lookups, pushes and pulls; default
	// 70/15/15, a CI fleet's proportions: most steps are cache checks.
	Mix [numOps]int
	// LayerBytes is the size of each pushed layer (fresh random bytes, so
	// that every push stores new chunks); default 1 MiB.
	LayerBytes int
	// SeedLayers are pushed (and recorded as step chains) before the timed
	// part; default 2 per client.
	SeedLayers int
	// ChainSteps is the number of steps one lookup asks about, in one
	// round trip (a Dockerfile's length); default 1, a single-step lookup.
	ChainSteps int
	// Seed makes the operation sequence and the data reproducible.
	Seed uint64
	// OpTimeout bounds each operation; default 60s.
	OpTimeout time.Duration
}

func (o *Options) defaults() error {
	if o.Clients <= 0 {
		o.Clients = 4
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.MaxOps <= 0 {
		o.MaxOps = 1_000_000
	}
	if o.Mix == ([numOps]int{}) {
		o.Mix = [numOps]int{70, 15, 15}
	}
	for _, w := range o.Mix {
		if w < 0 {
			return errors.New("load: negative weight in the mix")
		}
	}
	if o.LayerBytes <= 0 {
		o.LayerBytes = 1 << 20
	}
	if o.SeedLayers <= 0 {
		o.SeedLayers = 2 * o.Clients
	}
	if o.ChainSteps <= 0 {
		o.ChainSteps = 1
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = 60 * time.Second
	}
	return nil
}

// Result is what a run measured. Its JSON form is what
// `cairn-bench load --json` prints.
type Result struct {
	Clients         int       `json:"clients"`
	ElapsedSeconds  float64   `json:"elapsed_seconds"`
	LayerBytes      int       `json:"layer_bytes"`
	ChainSteps      int       `json:"chain_steps"`
	Ops             []OpStats `json:"ops"`    // one per kind, then "all"
	Errors          int64     `json:"errors"` // operations that failed
	FirstError      string    `json:"first_error,omitempty"`
	StoppedByMaxOps bool      `json:"stopped_by_max_ops"`
}

// OpStats are the figures of one kind of operation.
type OpStats struct {
	Op        string  `json:"op"`
	Count     int64   `json:"count"`  // operations that succeeded
	Errors    int64   `json:"errors"` // and that failed
	OpsPerSec float64 `json:"ops_per_sec"`
	Bytes     int64   `json:"bytes"` // layer bytes pushed or pulled
	MBPerSec  float64 `json:"mb_per_sec"`
	Hits      int64   `json:"hits,omitempty"` // lookups whose whole chain was cached
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	P999Ms    float64 `json:"p999_ms"`
	MaxMs     float64 `json:"max_ms"`
}

// worker is one client's state: its random source, its samples.
type worker struct {
	rng     *rand.Rand
	data    []byte
	lat     [numOps][]time.Duration
	errs    [numOps]int64
	bytes   [numOps]int64
	hits    int64
	firstEr error
}

// pool is the set of layers and steps pulls and lookups pick from.
type pool struct {
	mu     sync.Mutex
	layers []string
	chains [][]string
}

func (p *pool) addLayer(id string) {
	p.mu.Lock()
	if len(p.layers) < 10_000 {
		p.layers = append(p.layers, id)
	}
	p.mu.Unlock()
}

func (p *pool) pickLayer(rng *rand.Rand) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.layers) == 0 {
		return ""
	}
	return p.layers[rng.IntN(len(p.layers))]
}

// pickChain returns a seeded chain; only the seeding writes chains, so no
// lock is needed once the timed part runs.
func (p *pool) pickChain(rng *rand.Rand) []string {
	if len(p.chains) == 0 {
		return nil
	}
	return p.chains[rng.IntN(len(p.chains))]
}

// chain returns the instructions of a chain of n steps named by tag.
func chain(n int, tag string) []string {
	c := make([]string, n)
	for j := range c {
		c[j] = fmt.Sprintf("RUN cairn-bench-load %s step=%d", tag, j)
	}
	return c
}

// Run seeds the target, then runs the mix until the duration is over or
// MaxOps operations have run, and returns the figures. It fails only if
// the seeding fails (a server that is down); errors during the timed part
// are counted in the Result.
func Run(ctx context.Context, t Target, opt Options) (*Result, error) {
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	seedRng := rand.New(rand.NewPCG(opt.Seed, 0x5eed))
	var p pool
	buf := make([]byte, opt.LayerBytes)
	for i := range opt.SeedLayers {
		fillRandom(seedRng, buf)
		octx, cancel := context.WithTimeout(ctx, opt.OpTimeout)
		id, err := t.Push(octx, bytes.NewReader(buf), int64(len(buf)))
		if err == nil {
			c := chain(opt.ChainSteps, fmt.Sprintf("seed=%d chain=%d", opt.Seed, i))
			if err = t.Record(octx, c, id); err == nil {
				p.layers = append(p.layers, id)
				p.chains = append(p.chains, c)
			}
		}
		cancel()
		if err != nil {
			return nil, fmt.Errorf("load: seed: %w", err)
		}
	}

	var total int64
	for _, w := range opt.Mix {
		total += int64(w)
	}
	var started atomic.Int64
	stopAt := time.Now().Add(opt.Duration)
	workers := make([]*worker, opt.Clients)
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range workers {
		w := &worker{
			rng:  rand.New(rand.NewPCG(opt.Seed, uint64(i)+1)),
			data: make([]byte, opt.LayerBytes),
		}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(stopAt) {
				if started.Add(1) > opt.MaxOps {
					return
				}
				op := pickOp(w.rng, opt.Mix, total)
				w.run(ctx, t, &p, op, opt)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return summarize(workers, elapsed, opt, started.Load() > opt.MaxOps), nil
}

func pickOp(rng *rand.Rand, mix [numOps]int, total int64) Op {
	n := rng.Int64N(total)
	for op, w := range mix {
		if n < int64(w) {
			return Op(op)
		}
		n -= int64(w)
	}
	return OpLookup
}

// run does one operation and records its latency (successes only) or its
// error.
func (w *worker) run(ctx context.Context, t Target, p *pool, op Op, opt Options) {
	octx, cancel := context.WithTimeout(ctx, opt.OpTimeout)
	defer cancel()
	var (
		n   int64
		err error
	)
	// Work that is not the operation (picking, generating data) happens
	// before the clock starts.
	var (
		arg   string
		steps []string
	)
	switch op {
	case OpPush:
		fillRandom(w.rng, w.data)
	case OpPull:
		arg = p.pickLayer(w.rng)
	case OpLookup:
		// Half hits (a seeded chain), half misses (a chain never recorded).
		if w.rng.IntN(2) == 0 {
			steps = p.pickChain(w.rng)
		}
		if steps == nil {
			steps = chain(opt.ChainSteps, fmt.Sprintf("miss=%d", w.rng.Uint64()))
		}
	}
	start := time.Now()
	switch op {
	case OpPush:
		var id string
		id, err = t.Push(octx, bytes.NewReader(w.data), int64(len(w.data)))
		if err == nil {
			n = int64(len(w.data))
			p.addLayer(id)
		}
	case OpPull:
		n, err = t.Pull(octx, arg, io.Discard)
	case OpLookup:
		var hits int
		hits, err = t.Lookup(octx, steps)
		if err == nil && hits == len(steps) {
			w.hits++
		}
	}
	d := time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return // the run was cancelled: not the server's failure
		}
		w.errs[op]++
		if w.firstEr == nil {
			w.firstEr = fmt.Errorf("%s: %w", op, err)
		}
		return
	}
	w.lat[op] = append(w.lat[op], d)
	w.bytes[op] += n
}

func summarize(workers []*worker, elapsed time.Duration, opt Options, byMax bool) *Result {
	r := &Result{Clients: opt.Clients, ElapsedSeconds: elapsed.Seconds(), LayerBytes: opt.LayerBytes,
		ChainSteps: opt.ChainSteps, StoppedByMaxOps: byMax}
	var all []time.Duration
	allStats := OpStats{Op: "all"}
	for op := range numOps {
		var lat []time.Duration
		s := OpStats{Op: op.String()}
		for _, w := range workers {
			lat = append(lat, w.lat[op]...)
			s.Errors += w.errs[op]
			s.Bytes += w.bytes[op]
			if op == OpLookup {
				s.Hits += w.hits
			}
		}
		s.Count = int64(len(lat))
		fillRates(&s, lat, elapsed)
		r.Ops = append(r.Ops, s)
		all = append(all, lat...)
		allStats.Errors += s.Errors
		allStats.Bytes += s.Bytes
	}
	allStats.Count = int64(len(all))
	fillRates(&allStats, all, elapsed)
	r.Ops = append(r.Ops, allStats)
	r.Errors = allStats.Errors
	for _, w := range workers {
		if w.firstEr != nil {
			r.FirstError = w.firstEr.Error()
			break
		}
	}
	return r
}

// fillRates sets the rates and the percentiles from the exact samples
// (sorted: at most MaxOps durations, a few MB).
func fillRates(s *OpStats, lat []time.Duration, elapsed time.Duration) {
	if sec := elapsed.Seconds(); sec > 0 {
		s.OpsPerSec = float64(s.Count) / sec
		s.MBPerSec = float64(s.Bytes) / 1e6 / sec
	}
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	s.P50Ms = ms(Percentile(lat, 0.50))
	s.P99Ms = ms(Percentile(lat, 0.99))
	s.P999Ms = ms(Percentile(lat, 0.999))
	s.MaxMs = ms(lat[len(lat)-1])
}

// Percentile returns the q-quantile (0 ≤ q ≤ 1) of sorted samples, by the
// nearest-rank method: the smallest sample with at least q of all at or
// below it.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*q+0.999999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		b[i], b[i+1], b[i+2], b[i+3], b[i+4], b[i+5], b[i+6], b[i+7] =
			byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}

// WriteText writes the result as a table for people.
func (r *Result) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "%d clients, %.1f s, layers of %d bytes, lookups of %d step(s)", r.Clients, r.ElapsedSeconds, r.LayerBytes, r.ChainSteps)
	if r.StoppedByMaxOps {
		fmt.Fprint(w, ", stopped at --max-ops")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "op\tcount\terrors\tops/s\tMB/s\tp50 ms\tp99 ms\tp99.9 ms\tmax ms\t\n")
	for _, s := range r.Ops {
		if s.Count == 0 && s.Errors == 0 && s.Op != "all" {
			continue // not in the mix
		}
		name := s.Op
		if s.Op == OpLookup.String() && s.Count > 0 {
			name = fmt.Sprintf("lookup (%.0f%% hits)", 100*float64(s.Hits)/float64(s.Count))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t\n",
			name, s.Count, s.Errors, s.OpsPerSec, s.MBPerSec, s.P50Ms, s.P99Ms, s.P999Ms, s.MaxMs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.FirstError != "" {
		_, err := fmt.Fprintf(w, "first error: %s\n", r.FirstError)
		return err
	}
	return nil
}
