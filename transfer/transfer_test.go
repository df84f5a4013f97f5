package transfer

import (
	"context"
	"errors"
	"testing"
	"time"
)

// blocked says whether Acquire for name waits: it gives the call a short
// deadline, which only a waiting call meets.
func blocked(t *testing.T, l *Limiter, name string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	release, err := l.Acquire(ctx, name)
	if err == nil {
		release()
		return false
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire(%s): %v, want a slot or DeadlineExceeded", name, err)
	}
	return true
}

func acquire(t *testing.T, l *Limiter, name string) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	release, err := l.Acquire(ctx, name)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", name, err)
	}
	return release
}

func TestNewDefaults(t *testing.T) {
	for _, tt := range []struct {
		slots, perClient       int
		wantMax, wantPerClient int
	}{
		{32, 0, 32, 16},
		{4, 0, 4, 2},
		{1, 0, 1, 1},
		{0, 0, 1, 1},
		{3, 0, 3, 1},
		{4, 9, 4, 4},
		{4, 3, 4, 3},
	} {
		l := New(tt.slots, tt.perClient)
		if l.Max() != tt.wantMax || l.PerClient() != tt.wantPerClient {
			t.Errorf("New(%d, %d): Max %d, PerClient %d; want %d, %d", tt.slots, tt.perClient, l.Max(), l.PerClient(), tt.wantMax, tt.wantPerClient)
		}
	}
}

// TestShare: a client that holds its share waits for one of its own
// slots, while another client still gets one of the free slots.
func TestShare(t *testing.T) {
	l := New(4, 2)
	a1, a2 := acquire(t, l, "10.0.0.1"), acquire(t, l, "10.0.0.1")
	if !blocked(t, l, "10.0.0.1") {
		t.Fatal("a client got a third slot with a share of 2")
	}
	b1 := acquire(t, l, "10.0.0.2")
	if got := l.InUse(); got != 3 {
		t.Errorf("InUse = %d, want 3", got)
	}
	// A waiting call of client a gets the slot a releases, not b's.
	got := make(chan func(), 1)
	go func() {
		r, err := l.Acquire(context.Background(), "10.0.0.1")
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	a1()
	a3 := <-got
	b2 := acquire(t, l, "10.0.0.2")
	if !blocked(t, l, "10.0.0.3") {
		t.Fatal("a fifth slot was handed out")
	}
	for _, r := range []func(){a2, a3, b1, b2} {
		r()
	}
	a1() // a second release does nothing
	if got := l.InUse(); got != 0 {
		t.Errorf("InUse after every release = %d, want 0", got)
	}
	l.mu.Lock()
	n := len(l.clients)
	l.mu.Unlock()
	if n != 0 {
		t.Errorf("%d clients remembered after every release, want 0", n)
	}
}

// TestCancelledWaitHoldsNothing: a call whose context ends while it waits,
// for its share or for a shared slot, leaves every slot as it was.
func TestCancelledWaitHoldsNothing(t *testing.T) {
	l := New(2, 1)
	a := acquire(t, l, "a")
	if !blocked(t, l, "a") { // waits for its share
		t.Fatal("a got a second slot")
	}
	b := acquire(t, l, "b")
	if !blocked(t, l, "c") { // waits for a shared slot
		t.Fatal("c got a third slot")
	}
	a()
	b()
	c1, c2 := acquire(t, l, "c"), acquire(t, l, "d")
	c1()
	c2()
	if l.InUse() != 0 {
		t.Errorf("InUse = %d, want 0", l.InUse())
	}
}

func TestNilLimiter(t *testing.T) {
	var l *Limiter
	release, err := l.Acquire(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	release()
	if l.InUse() != 0 || l.Max() != 0 {
		t.Error("a nil Limiter reports slots")
	}
}

func TestHost(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:5000":  "127.0.0.1",
		"[::1]:7070":      "::1",
		"bufconn":         "bufconn",
		"/run/cairn.sock": "/run/cairn.sock",
	} {
		if got := Host(addr); got != want {
			t.Errorf("Host(%q) = %q, want %q", addr, got, want)
		}
	}
}
