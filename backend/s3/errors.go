package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"

	"github.com/minio/minio-go/v7"

	"github.com/cairnbuild/cairn/backend"
)

// unavailableCodes are S3 error codes that mean "the service cannot do it
// now", whatever the HTTP status that came with them.
var unavailableCodes = map[string]bool{
	"InternalError":              true,
	"ServiceUnavailable":         true,
	"SlowDown":                   true,
	"SlowDownRead":               true,
	"SlowDownWrite":              true,
	"RequestTimeout":             true,
	"Throttling":                 true,
	"ThrottlingException":        true,
	"RequestLimitExceeded":       true,
	"RequestThrottled":           true,
	"XMinioServerNotInitialized": true,
}

// translate turns an error from minio-go or the HTTP transport into the
// backend's vocabulary, with the operation and key as context:
//
//   - NoSuchKey, NoSuchBucket: backend.ErrNotFound;
//   - 5xx, 408, 429, throttling codes, refused or reset connections, a body
//     cut short, timeouts and other transport failures:
//     backend.ErrUnavailable (still wrapping the original error);
//   - a failure caused by ctx being done: ctx's error;
//   - anything else (access denied, bad certificates, ...): wrapped as is.
func translate(ctx context.Context, op, key string, err error) error {
	if err == nil {
		return nil
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && (resp.Code != "" || resp.StatusCode != 0) {
		switch {
		case resp.Code == "NoSuchKey" || resp.Code == "NoSuchBucket":
			return fmt.Errorf("s3: %s %s: %w: %w", op, key, backend.ErrNotFound, err)
		case unavailableCodes[resp.Code] || resp.StatusCode >= 500 ||
			resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests:
			return fmt.Errorf("s3: %s %s: %w: %w", op, key, backend.ErrUnavailable, err)
		}
		return fmt.Errorf("s3: %s %s: %w", op, key, err)
	}
	if cerr := ctx.Err(); cerr != nil {
		// The caller gave up; whatever broke, that is the reason.
		return fmt.Errorf("s3: %s %s: %w", op, key, cerr)
	}
	if isUnavailable(err) {
		return fmt.Errorf("s3: %s %s: %w: %w", op, key, backend.ErrUnavailable, err)
	}
	return fmt.Errorf("s3: %s %s: %w", op, key, err)
}

// isUnavailable reports whether a transport-level error is one that may
// pass: the server is down, restarting, overloaded or the network broke.
func isUnavailable(err error) bool {
	// Certificate problems and talking HTTP to an HTTPS port are
	// configuration errors; retrying cannot help.
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verification     *tls.CertificateVerificationError
		urlErr           *url.Error
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &verification) {
		return false
	}
	if errors.As(err, &urlErr) && urlErr.Err != nil &&
		urlErr.Err.Error() == "http: server gave HTTP response to HTTPS client" {
		return false
	}
	var netErr net.Error // *url.Error is one too: http.Client.Do failed
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH),
		// An internal timeout (not the caller's context, checked before).
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		// Dialling, writing the request or reading the response failed
		// (minio-go also reports a connection closed mid-request this way).
		errors.As(err, &netErr):
		return true
	}
	return false
}
