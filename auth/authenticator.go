package auth

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Options tune an [Authenticator]. Zero fields take the defaults.
type Options struct {
	// Logger receives reloads and reload errors. Default: discard.
	Logger *slog.Logger
	// Poll is how often, at most, Open's file is checked for changes; the
	// check (a stat) happens on use, so an idle server does nothing.
	// Default 2s.
	Poll time.Duration
	// Limiter tunes the slowdown of failed logins.
	Limiter LimiterOptions
	// Now is the clock of the polling, for tests. Default time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Poll <= 0 {
		o.Poll = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// An Authenticator turns tokens into identities, following a credentials
// file. It is safe for concurrent use; a reload swaps the whole policy at
// once, so a call sees the old file or the new one, never a mix.
type Authenticator struct {
	opts    Options
	path    string // "" for a fixed policy
	limiter *Limiter
	policy  atomic.Pointer[policy]

	lastPoll atomic.Int64 // unix nanoseconds of the last look at the file
	closed   atomic.Bool
	mu       sync.Mutex  // held while reloading
	stamp    os.FileInfo // what the file looked like when last read
}

// Open loads the credentials file at path and returns an Authenticator
// that reloads it when it changes (its inode, size or modification time),
// looking at most every opts.Poll. A file that fails to load keeps the
// previous policy in force and logs an error; write the file to a temporary
// name and rename it over the old one, so that no reader sees half of it.
func Open(path string, opts Options) (*Authenticator, error) {
	opts.setDefaults()
	a := &Authenticator{opts: opts, path: path, limiter: NewLimiter(opts.Limiter)}
	fi, p, err := load(path)
	if err != nil {
		return nil, err
	}
	a.policy.Store(p)
	a.stamp = fi
	a.lastPoll.Store(opts.Now().UnixNano())
	return a, nil
}

// New returns an Authenticator with the fixed policy c, for tests and for
// a server that builds its policy itself.
func New(c *Config, opts Options) (*Authenticator, error) {
	opts.setDefaults()
	p, err := c.compile(noLines)
	if err != nil {
		return nil, err
	}
	a := &Authenticator{opts: opts, limiter: NewLimiter(opts.Limiter)}
	a.policy.Store(p)
	return a, nil
}

// AllowAll returns an Authenticator under which anonymous clients may do
// everything everywhere: what cairn does without --auth-file. Fronts keep
// the same code path, with or without auth.
func AllowAll() *Authenticator {
	a, err := New(&Config{Anonymous: []ScopeConfig{{
		Actions:    []string{"read", "write", "delete", "admin"},
		Namespaces: []string{"*"},
	}}}, Options{})
	if err != nil {
		panic(err) // a fixed, valid config
	}
	return a
}

func load(path string) (os.FileInfo, *policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("auth: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("auth: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("auth: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return fi, nil, fmt.Errorf("%s: %w", path, err)
	}
	p, err := c.compile(noLines) // checked by ParseConfig
	if err != nil {
		return fi, nil, err
	}
	return fi, p, nil
}

// current returns the policy in force, first reloading the file if it is
// time to look and it changed.
func (a *Authenticator) current() *policy {
	if a.path != "" && !a.closed.Load() {
		now := a.opts.Now().UnixNano()
		last := a.lastPoll.Load()
		if now-last >= int64(a.opts.Poll) && a.lastPoll.CompareAndSwap(last, now) {
			a.reload()
		}
	}
	return a.policy.Load()
}

// reload reads the file again if it changed since it was last read.
func (a *Authenticator) reload() {
	if !a.mu.TryLock() {
		return // another call is reloading
	}
	defer a.mu.Unlock()
	fi, err := os.Stat(a.path)
	if err != nil {
		a.opts.Logger.Error("auth: cannot stat the credentials file; keeping the previous one", "path", a.path, "err", err)
		return
	}
	if a.stamp != nil && os.SameFile(a.stamp, fi) && fi.Size() == a.stamp.Size() && fi.ModTime().Equal(a.stamp.ModTime()) {
		return
	}
	fi, p, err := load(a.path)
	if fi != nil {
		a.stamp = fi // a broken file is reported once, not at every poll
	}
	if err != nil {
		a.opts.Logger.Error("auth: cannot load the credentials file; keeping the previous one", "path", a.path, "err", err)
		return
	}
	a.policy.Store(p)
	a.opts.Logger.Info("auth: credentials file reloaded", "path", a.path, "tokens", len(p.byName), "anonymous", !p.anonymous.grantsNothing())
}

// Authenticate returns the identity of token, or an error wrapping
// [ErrUnauthenticated] for an empty or unknown token.
//
// The lookup is by the token's SHA-256, in a map. Its timing depends on
// the hash of what the caller sent; learning how that hash compares with
// stored ones tells nothing about any stored token (that would need a
// SHA-256 preimage), so no secret-dependent timing is exposed, and the cost
// does not grow with the number of tokens. Fronts call [Authenticator.Login],
// which adds the slowdown of failing clients.
func (a *Authenticator) Authenticate(token string) (*Identity, error) {
	p := a.current()
	if token == "" {
		return nil, fmt.Errorf("%w: no token", ErrUnauthenticated)
	}
	if id, ok := p.byHash[sha256.Sum256([]byte(token))]; ok {
		return id, nil
	}
	return nil, fmt.Errorf("%w: unknown token", ErrUnauthenticated)
}

// Login is Authenticate for a front: it first waits out client's slowdown
// (see [Limiter]; client is a [ClientKey]), then records the outcome.
func (a *Authenticator) Login(ctx context.Context, client, token string) (*Identity, error) {
	if err := a.limiter.Wait(ctx, client); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	id, err := a.Authenticate(token)
	if err != nil {
		a.limiter.Fail(client)
		return nil, err
	}
	a.limiter.Succeed(client)
	return id, nil
}

// Anonymous returns the identity of clients without credentials. It is
// never nil; it allows nothing when the file gives anonymous clients no
// scope.
func (a *Authenticator) Anonymous() *Identity { return a.current().anonymous }

// AnonymousAllowed reports whether the file gives anonymous clients any
// scope at all.
func (a *Authenticator) AnonymousAllowed() bool { return !a.current().anonymous.grantsNothing() }

// lookup returns the current identity named name: bearer tokens carry a
// name, and a token removed from the file stops them at once.
func (a *Authenticator) lookup(name string, anonymous bool) (*Identity, bool) {
	p := a.current()
	if anonymous {
		return p.anonymous, !p.anonymous.grantsNothing()
	}
	id, ok := p.byName[name]
	return id, ok
}

// Limiter returns the limiter Login uses, for tests and metrics.
func (a *Authenticator) Limiter() *Limiter { return a.limiter }

// Close stops the reloading; the policy last loaded stays in force.
func (a *Authenticator) Close() error {
	a.closed.Store(true)
	return nil
}
