package auth

import (
	"container/list"
	"context"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"
)

// LimiterOptions tune a [Limiter]. Zero fields take the defaults.
type LimiterOptions struct {
	// Free is how many recent failures cost nothing, so that a typo or a
	// stale token does not slow anyone down. Default 3.
	Free int
	// Base is the delay once a client has more than Free recent failures;
	// it doubles with each further failure. Default 100ms.
	Base time.Duration
	// Max caps the delay. Default 2s: long enough that guessing is
	// hopeless, short enough that a misconfigured CI job still fails fast.
	Max time.Duration
	// HalfLife is how fast failures are forgotten. Default 15s: after a
	// quiet minute a client keeps 1/16 of its failures.
	HalfLife time.Duration
	// Clients bounds the clients remembered; the least recently seen are
	// forgotten first. Default 10 000 (about a megabyte).
	Clients int
	// Now is the clock, for tests. Default time.Now.
	Now func() time.Time
}

func (o *LimiterOptions) setDefaults() {
	if o.Free <= 0 {
		o.Free = 3
	}
	if o.Base <= 0 {
		o.Base = 100 * time.Millisecond
	}
	if o.Max <= 0 {
		o.Max = 2 * time.Second
	}
	if o.HalfLife <= 0 {
		o.HalfLife = 15 * time.Second
	}
	if o.Clients <= 0 {
		o.Clients = 10_000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// A Limiter slows down clients whose logins fail. Before checking a
// client's credentials a front calls Wait, which returns at once unless
// the client failed more than Free times recently; then the client's
// attempts are spaced by a delay that doubles with each failure up to Max,
// whether they come one after another or all at once. Fail and Succeed
// report the outcome.
//
// The delay comes before the check, not after a failure: an attacker
// sending many guesses in parallel would otherwise learn of a right guess
// at once. The price is that a client sharing an address with a failing
// one is slowed too; Succeed lifts the slowdown, since a client holding a
// valid token is not guessing. Tokens from [NewToken] cannot be guessed at
// any rate; the limiter is for hand-made weak tokens and for noisy
// misconfigured clients.
//
// A Limiter is safe for concurrent use; its memory is bounded by Clients.
type Limiter struct {
	opts LimiterOptions

	mu      sync.Mutex
	clients map[string]*list.Element // of *failures
	lru     list.List                // front: most recently seen
}

// failures is what a Limiter remembers of one client.
type failures struct {
	client string
	score  float64   // recent failures, decayed to at
	at     time.Time // when score was last updated
	next   time.Time // the earliest time the next attempt may start
}

// NewLimiter returns a Limiter with opts (zero: the defaults).
func NewLimiter(opts LimiterOptions) *Limiter {
	opts.setDefaults()
	return &Limiter{opts: opts, clients: make(map[string]*list.Element)}
}

// Wait blocks until client may try to log in, or ctx is done (it returns
// ctx's error).
func (l *Limiter) Wait(ctx context.Context, client string) error {
	d := l.reserve(client)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reserve takes client's next attempt slot and returns how long to wait
// for it.
func (l *Limiter) reserve(client string) time.Duration {
	now := l.opts.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.clients[client]
	if !ok {
		return 0
	}
	f := e.Value.(*failures)
	l.decay(f, now)
	d := l.delay(f.score)
	if d == 0 {
		return 0
	}
	start := f.next
	if start.Before(now) {
		start = now
	}
	f.next = start.Add(d)
	l.lru.MoveToFront(e)
	return start.Sub(now)
}

// Fail records a failed login of client.
func (l *Limiter) Fail(client string) {
	now := l.opts.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var f *failures
	if e, ok := l.clients[client]; ok {
		f = e.Value.(*failures)
		l.lru.MoveToFront(e)
		l.decay(f, now)
	} else {
		f = &failures{client: client, at: now}
		l.clients[client] = l.lru.PushFront(f)
		for l.lru.Len() > l.opts.Clients {
			old := l.lru.Remove(l.lru.Back()).(*failures)
			delete(l.clients, old.client)
		}
	}
	f.score++
	if next := now.Add(l.delay(f.score)); next.After(f.next) {
		f.next = next
	}
}

// Succeed records a successful login of client: it forgets its failures.
func (l *Limiter) Succeed(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.clients[client]; ok {
		l.lru.Remove(e)
		delete(l.clients, client)
	}
}

// Delay returns how long the next attempt of client would wait now,
// without taking its slot: for tests and metrics.
func (l *Limiter) Delay(client string) time.Duration {
	now := l.opts.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.clients[client]
	if !ok {
		return 0
	}
	f := e.Value.(*failures)
	l.decay(f, now)
	if l.delay(f.score) == 0 || !f.next.After(now) {
		return 0
	}
	return f.next.Sub(now)
}

// decay forgets the failures of f that are old at now.
func (l *Limiter) decay(f *failures, now time.Time) {
	if el := now.Sub(f.at); el > 0 {
		f.score *= math.Exp2(-float64(el) / float64(l.opts.HalfLife))
		f.at = now
	}
}

// delay is the spacing of attempts for a client with score recent
// failures: nothing up to Free, then Base doubling to Max.
func (l *Limiter) delay(score float64) time.Duration {
	n := int(math.Round(score)) - l.opts.Free
	if n <= 0 {
		return 0
	}
	if n > 30 {
		return l.opts.Max
	}
	return min(l.opts.Base<<(n-1), l.opts.Max)
}

// ClientKey turns a remote address ("203.0.113.7:51234", "[2001:db8::1]:443")
// into the key a Limiter counts failures under: the IPv4 address, or the
// IPv6 /64 (one host commonly holds a whole /64). Addresses that are not
// IP (a unix socket, an in-memory listener) are their own key.
func ClientKey(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return addr
	}
	ip = ip.Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, err := ip.Prefix(64)
	if err != nil {
		return ip.String()
	}
	return p.String()
}
