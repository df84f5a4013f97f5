package auth

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestLimiterGrowsAndCaps(t *testing.T) {
	clock := newFakeClock()
	l := NewLimiter(LimiterOptions{Now: clock.Now})
	want := []time.Duration{0, 0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 2 * time.Second, 2 * time.Second}
	for i, w := range want {
		l.Fail("c")
		if got := l.Delay("c"); got != w {
			t.Errorf("after %d failures: delay %v, want %v", i+1, got, w)
		}
	}
}

func TestLimiterSpacesAttempts(t *testing.T) {
	// Parallel attempts of a slowed client take successive slots, so that
	// sending many at once does not beat the delay.
	clock := newFakeClock()
	l := NewLimiter(LimiterOptions{Now: clock.Now})
	for range 4 {
		l.Fail("c")
	}
	for i, want := range []time.Duration{100, 200, 300, 400} {
		if got := l.reserve("c"); got != want*time.Millisecond {
			t.Errorf("attempt %d: wait %v, want %v", i, got, want*time.Millisecond)
		}
	}
	if got := l.reserve("other"); got != 0 {
		t.Errorf("another client waits %v", got)
	}
}

func TestLimiterDecays(t *testing.T) {
	clock := newFakeClock()
	l := NewLimiter(LimiterOptions{Now: clock.Now})
	for range 8 {
		l.Fail("c")
	}
	if l.Delay("c") == 0 {
		t.Fatal("no delay after 8 failures")
	}
	// A quiet minute: 8 failures decay to 0.5, no delay; the next failures
	// are free again.
	clock.Advance(time.Minute)
	if d := l.Delay("c"); d != 0 {
		t.Errorf("after a quiet minute: delay %v", d)
	}
	l.Fail("c")
	l.Fail("c")
	if d := l.Delay("c"); d != 0 {
		t.Errorf("two failures after a quiet minute: delay %v, want 0", d)
	}
}

func TestLimiterSucceedForgets(t *testing.T) {
	clock := newFakeClock()
	l := NewLimiter(LimiterOptions{Now: clock.Now})
	for range 6 {
		l.Fail("c")
	}
	l.Succeed("c")
	if d := l.Delay("c"); d != 0 {
		t.Errorf("after success: %v", d)
	}
}

func TestLimiterBoundedMemory(t *testing.T) {
	clock := newFakeClock()
	l := NewLimiter(LimiterOptions{Now: clock.Now, Clients: 100})
	for range 5 {
		l.Fail("old")
	}
	for i := range 1000 {
		l.Fail(fmt.Sprint("c", i))
	}
	if n := len(l.clients); n != 100 || l.lru.Len() != 100 {
		t.Errorf("%d clients remembered, want 100", n)
	}
	if _, ok := l.clients["old"]; ok {
		t.Error("the least recently seen client was kept")
	}
}

func TestLimiterWait(t *testing.T) {
	l := NewLimiter(LimiterOptions{Base: time.Millisecond, Free: 1})
	if err := l.Wait(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	l.Fail("c")
	l.Fail("c")
	start := time.Now()
	if err := l.Wait(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < time.Millisecond/2 {
		t.Errorf("waited %v, want about 1ms", el)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l2 := NewLimiter(LimiterOptions{Base: time.Hour, Max: time.Hour, Free: 1})
	l2.Fail("c")
	l2.Fail("c")
	if err := l2.Wait(ctx, "c"); err != context.Canceled {
		t.Errorf("canceled: %v", err)
	}
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7:51234":          "203.0.113.7",
		"203.0.113.7":                "203.0.113.7",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:1":   "2001:db8:1:2::/64",
		"[::ffff:203.0.113.7]:80":    "203.0.113.7",
		"bufconn":                    "bufconn",
		"@":                          "@",
	} {
		if got := ClientKey(in); got != want {
			t.Errorf("ClientKey(%q) = %q, want %q", in, got, want)
		}
	}
}
