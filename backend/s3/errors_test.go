package s3

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/cairnbuild/cairn/backend"
)

func TestTranslate(t *testing.T) {
	s3err := func(code string, status int) error {
		return minio.ErrorResponse{Code: code, StatusCode: status, Message: code}
	}
	urlErr := func(err error) error { return &url.Error{Op: "Get", URL: "http://x/b/k", Err: err} }
	opErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: errno}}
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	live := context.Background()
	boom := errors.New("boom")

	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want error // nil: none of the sentinels
	}{
		{"NoSuchKey", live, s3err("NoSuchKey", 404), backend.ErrNotFound},
		{"NoSuchBucket", live, s3err("NoSuchBucket", 404), backend.ErrNotFound},
		{"wrapped NoSuchKey", live, fmt.Errorf("x: %w", s3err("NoSuchKey", 404)), backend.ErrNotFound},
		{"500", live, s3err("InternalError", 500), backend.ErrUnavailable},
		{"503 SlowDown", live, s3err("SlowDown", 503), backend.ErrUnavailable},
		{"SlowDown without status", live, s3err("SlowDown", 0), backend.ErrUnavailable},
		{"429", live, s3err("TooManyRequests", 429), backend.ErrUnavailable},
		{"MinIO starting", live, s3err("XMinioServerNotInitialized", 503), backend.ErrUnavailable},
		{"AccessDenied: permanent", live, s3err("AccessDenied", 403), nil},
		{"InvalidRange: not unavailable", live, s3err("InvalidRange", 416), nil},
		{"refused", live, urlErr(opErr(syscall.ECONNREFUSED)), backend.ErrUnavailable},
		{"reset", live, urlErr(opErr(syscall.ECONNRESET)), backend.ErrUnavailable},
		{"unexpected EOF mid-body", live, io.ErrUnexpectedEOF, backend.ErrUnavailable},
		{"connection closed (minio-go)", live, urlErr(errors.New("Connection closed by foreign host http://x. Retry again.")), backend.ErrUnavailable},
		{"timeout", live, urlErr(&net.DNSError{IsTimeout: true}), backend.ErrUnavailable},
		{"unknown CA: permanent", live, urlErr(x509.UnknownAuthorityError{}), nil},
		{"HTTP to HTTPS: permanent", live, urlErr(errors.New("http: server gave HTTP response to HTTPS client")), nil},
		{"cancelled", cancelled, urlErr(context.Canceled), context.Canceled},
		{"cancelled, any error", cancelled, urlErr(opErr(syscall.ECONNRESET)), context.Canceled},
		{"internal timeout, caller still waiting", live, urlErr(context.DeadlineExceeded), backend.ErrUnavailable},
		{"other", live, boom, nil},
	}
	sentinels := []error{backend.ErrNotFound, backend.ErrUnavailable, context.Canceled}
	for _, tt := range tests {
		got := translate(tt.ctx, "get", "k", tt.err)
		for _, s := range sentinels {
			if is, want := errors.Is(got, s), s == tt.want; is != want {
				t.Errorf("%s: translate(%v) = %v; errors.Is(_, %v) = %v, want %v", tt.name, tt.err, got, s, is, want)
			}
		}
		if !errors.Is(got, tt.err) && tt.want != context.Canceled {
			t.Errorf("%s: translate(%v) = %v, which no longer wraps the original", tt.name, tt.err, got)
		}
	}
	if translate(live, "get", "k", nil) != nil {
		t.Error("translate(nil) != nil")
	}
}
