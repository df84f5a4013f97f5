package registry_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/registry"
	"github.com/cairnbuild/cairn/transfer"
)

// lockedBuffer is a bytes.Buffer safe for a logger and a test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStalledReader: a blob GET whose client reads the answer's first
// bytes and then nothing, without closing its connection, is cut after the
// send idle timeout, and frees the only transfer slot for the next GET;
// the server logs a stalled client. Without the idle deadline the next GET
// waits for the slot until its deadline ends the test.
func TestStalledReader(t *testing.T) {
	for _, enc := range []string{"identity", "zstd"} {
		t.Run(enc, func(t *testing.T) {
			var logs lockedBuffer
			tr := openTestRegistryWith(t, t.TempDir(), registry.Options{
				BodyIdleTimeout: bodyIdle,
				SendIdleTimeout: 300 * time.Millisecond,
				Transfers:       transfer.New(1, 1),
				Logger:          slog.New(slog.NewTextHandler(&logs, nil)),
			})
			// More than the socket buffers of both ends hold (a few MiB
			// on loopback), so the server's writes block.
			b := randBytes(16 << 20)
			d := tr.pushBlob(t, "app", b)
			path := "/v2/app/blobs/" + string(d)

			conn, err := net.Dial("tcp", tr.host)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept-Encoding: %s\r\n\r\n", path, tr.host, enc)
			head := make([]byte, 12)
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(conn, head); err != nil || string(head) != "HTTP/1.1 200" {
				t.Fatalf("stalled GET: answer %q, %v", head, err)
			}
			// The slot is taken (the status is written after it); this client
			// reads no more.

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, "GET", tr.srv.URL+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("GET while a stalled reader held the only slot: %v", err)
			}
			got, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || !bytes.Equal(got, b) {
				t.Fatalf("GET while a stalled reader held the only slot: %d bytes, %v", len(got), err)
			}

			// The stalled answer was cut short: the rest of it ends early.
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := io.Copy(io.Discard, conn)
			if n >= int64(len(b)) {
				t.Errorf("the stalled reader got %d bytes (%v), the whole blob", n, err)
			}
			if !strings.Contains(logs.String(), "client stalled") {
				t.Errorf("no stalled client logged:\n%s", logs.String())
			}
		})
	}
}
