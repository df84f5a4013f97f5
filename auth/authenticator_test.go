package auth

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fileWith returns a credentials file granting token the scope line.
func fileWith(name, token, scope string) string {
	return "tokens:\n  - name: " + name + "\n    sha256: " + HashToken(token) + "\n    scopes:\n      - " + scope + "\n"
}

// writeAtomic replaces path as an operator should: a new file renamed over
// the old.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestAuthenticate(t *testing.T) {
	a, err := New(&Config{Tokens: []TokenConfig{
		{Name: "ci", SHA256: HashToken("cairn_secret"), Scopes: []ScopeConfig{{Actions: []string{"read"}, Namespaces: []string{"main"}}}},
	}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Authenticate("cairn_secret")
	if err != nil || id.Name != "ci" || id.Anonymous {
		t.Fatalf("good token: %v, %v", id, err)
	}
	for _, bad := range []string{"", "cairn_secreT", "cairn_secret ", HashToken("cairn_secret")} {
		if id, err := a.Authenticate(bad); !errors.Is(err, ErrUnauthenticated) || id != nil {
			t.Errorf("token %q: got %v, %v; want unauthenticated", bad, id, err)
		}
	}
	if a.AnonymousAllowed() || !a.Anonymous().grantsNothing() || !a.Anonymous().Anonymous {
		t.Error("anonymous allowed without anonymous scopes")
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "auth.yaml")
	writeAtomic(t, path, fileWith("ci", "cairn_one", "{actions: [read], namespaces: [main]}"))
	clock := newFakeClock()
	var logs bytes.Buffer
	a, err := Open(path, Options{Now: clock.Now, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	mustAllow := func(token string, act Action, ns string, want bool) {
		t.Helper()
		id, err := a.Authenticate(token)
		if got := err == nil && id.Allowed(act, ns); got != want {
			t.Errorf("%s %s %s: got %v (%v), want %v", token, act, ns, got, err, want)
		}
	}
	mustAllow("cairn_one", Read, "main", true)

	// A new file: new scopes, after the poll interval and not before.
	writeAtomic(t, path, fileWith("ci", "cairn_one", "{actions: [read, write], namespaces: [main]}"))
	mustAllow("cairn_one", Write, "main", false)
	clock.Advance(2 * time.Second)
	mustAllow("cairn_one", Write, "main", true)

	// A broken file keeps the previous policy and logs once.
	writeAtomic(t, path, "tokens:\n  - name: ci\n    sha256: nothex\n")
	clock.Advance(2 * time.Second)
	mustAllow("cairn_one", Write, "main", true)
	clock.Advance(2 * time.Second)
	mustAllow("cairn_one", Write, "main", true)
	if n := strings.Count(logs.String(), "cannot load"); n != 1 {
		t.Errorf("broken file logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "nothex") && !strings.Contains(logs.String(), "sha256") {
		t.Errorf("log does not say what is wrong:\n%s", logs.String())
	}

	// Fixed again: a token replaced by another is revoked.
	writeAtomic(t, path, fileWith("ci", "cairn_two", "{actions: [read], namespaces: [main]}"))
	clock.Advance(2 * time.Second)
	mustAllow("cairn_one", Read, "main", false)
	mustAllow("cairn_two", Read, "main", true)

	// A deleted file keeps the policy too.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Second)
	mustAllow("cairn_two", Read, "main", true)

	// After Close, nothing is reloaded.
	a.Close()
	writeAtomic(t, path, fileWith("ci", "cairn_three", "{actions: [read], namespaces: [main]}"))
	clock.Advance(2 * time.Second)
	mustAllow("cairn_two", Read, "main", true)
}

func TestReloadInPlace(t *testing.T) {
	// An editor writing the file in place (same inode) is seen too, by its
	// size or modification time.
	path := filepath.Join(t.TempDir(), "auth.yaml")
	if err := os.WriteFile(path, []byte(fileWith("ci", "cairn_one", "{actions: [read], namespaces: [main]}")), 0o600); err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	a, err := Open(path, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(fileWith("ci", "cairn_one", "{actions: [write], namespaces: [main]}")), 0o600); err != nil {
		t.Fatal(err)
	}
	clock.Advance(3 * time.Second)
	if id, err := a.Authenticate("cairn_one"); err != nil || !id.Allowed(Write, "main") {
		t.Errorf("in-place edit not seen: %v %v", id, err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "missing.yaml"), Options{}); err == nil {
		t.Error("missing file accepted")
	}
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte("tokens: [\n"), 0o600)
	if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("bad file: got %v, want an error naming the file", err)
	}
}

func TestAllowAll(t *testing.T) {
	a := AllowAll()
	id := a.Anonymous()
	for _, act := range actions {
		if !id.AllowedAll(act) {
			t.Errorf("AllowAll: anonymous may not %s everywhere", act)
		}
	}
}

func TestLoginSlowsFailures(t *testing.T) {
	clock := newFakeClock()
	a, err := New(&Config{Tokens: []TokenConfig{
		{Name: "ci", SHA256: HashToken("cairn_good"), Scopes: []ScopeConfig{{Actions: []string{"read"}, Namespaces: []string{"main"}}}},
	}}, Options{Limiter: LimiterOptions{Now: clock.Now}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 4 {
		if _, err := a.Login(ctx, "10.0.0.1", "cairn_bad"); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("bad token: %v", err)
		}
	}
	if d := a.Limiter().Delay("10.0.0.1"); d != 100*time.Millisecond {
		t.Errorf("after 4 failures: delay %v, want 100ms", d)
	}
	if d := a.Limiter().Delay("10.0.0.2"); d != 0 {
		t.Errorf("another client: delay %v, want 0", d)
	}
	// A login while slowed is refused if the caller gives up first.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.Login(cctx, "10.0.0.1", "cairn_good"); !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, context.Canceled) {
		t.Errorf("canceled wait: %v", err)
	}
	clock.Advance(time.Second)
	if _, err := a.Login(ctx, "10.0.0.1", "cairn_good"); err != nil {
		t.Fatal(err)
	}
	if d := a.Limiter().Delay("10.0.0.1"); d != 0 {
		t.Errorf("after a success: delay %v, want 0", d)
	}
}
