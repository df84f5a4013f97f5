package transfer

import (
	"context"
	"net"
	"sync"
)

// DefaultShare returns the default per-client share of a limit of slots: half,
// and at least 1. Half leaves room for a second client when one client
// fills its share, while a lone client still gets a useful parallelism.
func DefaultShare(slots int) int { return max(slots/2, 1) }

// Limiter hands out transfer slots: at most Max() at a time over all
// clients, at most PerClient() to one client. Make it with New. It is safe
// for concurrent use; a nil *Limiter limits nothing.
type Limiter struct {
	total     chan struct{} // a token per slot held
	perClient int

	mu      sync.Mutex
	clients map[string]*client // clients holding or waiting for a slot
}

// client is one client's share: a token per slot it holds.
type client struct {
	held chan struct{}
	refs int // Acquire calls holding or waiting for a slot; at 0 the entry goes
}

// New returns a Limiter of slots slots (at least 1), of which one client
// may hold perClient at a time: perClient <= 0 means DefaultShare(slots),
// and more than slots means slots (no per-client limit).
func New(slots, perClient int) *Limiter {
	slots = max(slots, 1)
	if perClient <= 0 {
		perClient = DefaultShare(slots)
	}
	perClient = min(perClient, slots)
	return &Limiter{total: make(chan struct{}, slots), perClient: perClient, clients: make(map[string]*client)}
}

// Max returns the number of slots (0 for a nil Limiter).
func (l *Limiter) Max() int {
	if l == nil {
		return 0
	}
	return cap(l.total)
}

// PerClient returns the most slots one client may hold at a time (0 for a
// nil Limiter).
func (l *Limiter) PerClient() int {
	if l == nil {
		return 0
	}
	return l.perClient
}

// Acquire waits for a slot for the named client (see Host): first for one
// of the client's own share, then for one of the shared slots, each in the
// order the calls asked. It returns a function that releases the slot,
// to be called once when the call is done, or the context's error if ctx
// ends first (holding nothing then). A nil Limiter returns at once.
func (l *Limiter) Acquire(ctx context.Context, name string) (release func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	c := l.ref(name)
	select {
	case c.held <- struct{}{}:
	case <-ctx.Done():
		l.unref(name, c)
		return nil, ctx.Err()
	}
	select {
	case l.total <- struct{}{}:
	case <-ctx.Done():
		<-c.held
		l.unref(name, c)
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-l.total
			<-c.held
			l.unref(name, c)
		})
	}, nil
}

// InUse returns the number of slots held.
func (l *Limiter) InUse() int {
	if l == nil {
		return 0
	}
	return len(l.total)
}

func (l *Limiter) ref(name string) *client {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[name]
	if c == nil {
		c = &client{held: make(chan struct{}, l.perClient)}
		l.clients[name] = c
	}
	c.refs++
	return c
}

func (l *Limiter) unref(name string, c *client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.refs--; c.refs == 0 {
		delete(l.clients, name)
	}
}

// Host names the client at a network address: the host of "host:port"
// (so that the connections of one client count together, whatever their
// ports), or addr itself when it has no port (a Unix socket, an in-memory
// listener).
func Host(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
