package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/cairnbuild/cairn/backend"
)

// Defaults for Options fields left zero.
const (
	// DefaultPartSize is the multipart part size: objects up to this size go
	// up in a single PUT, larger ones in parts of this size, one part
	// buffered in memory per Put. cairn's chunks (at most 1 MiB) never reach
	// it. 16 MiB is minio-go's own default; with S3's 10,000-part limit it
	// allows objects up to 156 GiB (raise PartSize for larger ones).
	DefaultPartSize = 16 << 20
	// DefaultMaxRetries is the number of attempts minio-go makes per
	// request: one, because retrying belongs to the backend/retry decorator.
	DefaultMaxRetries = 1
)

// minPartSize is S3's smallest allowed part (except the last).
const minPartSize = 5 << 20

// Options configure a Store. Endpoint and Bucket are required.
type Options struct {
	// Endpoint is the service's host[:port], for example
	// "s3.eu-west-1.amazonaws.com" or "127.0.0.1:9000". An "https://" or
	// "http://" prefix is accepted and sets Secure (http:// with Secure set
	// is an error).
	Endpoint string
	// Bucket is the bucket the objects live in. It is created (in Region)
	// if it does not exist.
	Bucket string
	// Region is the bucket's region. Default: $AWS_REGION, else
	// $AWS_DEFAULT_REGION, else empty, which lets minio-go look the bucket's
	// region up once (and create a missing bucket in us-east-1).
	Region string

	// AccessKey, SecretKey and SessionToken are static credentials. When
	// AccessKey is empty they come from the usual AWS sources instead:
	// $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY and $AWS_SESSION_TOKEN,
	// then the shared credentials file (~/.aws/credentials, $AWS_PROFILE),
	// then $MINIO_ROOT_USER/$MINIO_ROOT_PASSWORD. With none of them the
	// requests are anonymous.
	AccessKey    string
	SecretKey    string
	SessionToken string

	// Secure selects HTTPS. Extra CAs can be given in $SSL_CERT_FILE.
	Secure bool

	// Prefix is put in front of every key, so that several stores can share
	// one bucket ("cairn" or "cairn/" both store key "a/b" as "cairn/a/b").
	// Default: none.
	Prefix string

	// PartSize is the multipart part size and single-PUT threshold.
	// Default: DefaultPartSize; minimum 5 MiB.
	PartSize int64

	// MaxRetries is how many attempts minio-go makes for one request before
	// it reports a transient failure. Default: DefaultMaxRetries (no internal
	// retry). Puts are never retried internally (the reader cannot rewind).
	MaxRetries int

	// Transport replaces the HTTP transport, for example to add a custom
	// TLS configuration. Default: minio-go's DefaultTransport tuned for many
	// parallel small requests (256 idle connections per host, 10 s dial and
	// TLS handshake timeouts, 30 s to the response headers).
	Transport http.RoundTripper
}

// Store is a backend.Store in an S3 bucket. It is safe for concurrent use.
type Store struct {
	client   *minio.Client
	bucket   string
	prefix   string // "" or ends in '/'
	partSize uint64
}

var _ backend.Store = (*Store)(nil)

// New validates opts, connects to the endpoint and makes sure the bucket
// exists, creating it if needed. A server that cannot be reached is an error
// wrapping backend.ErrUnavailable.
func New(ctx context.Context, opts Options) (*Store, error) {
	endpoint, secure, err := parseEndpoint(opts.Endpoint, opts.Secure)
	if err != nil {
		return nil, err
	}
	if err := s3utils.CheckValidBucketNameStrict(opts.Bucket); err != nil {
		return nil, fmt.Errorf("s3: bucket %q: %v", opts.Bucket, err)
	}
	prefix := opts.Prefix
	if prefix != "" {
		prefix = strings.TrimSuffix(prefix, "/") + "/"
		if err := backend.ValidatePrefix(prefix); err != nil {
			return nil, fmt.Errorf("s3: prefix %q: %w", opts.Prefix, err)
		}
	}
	partSize := opts.PartSize
	switch {
	case partSize == 0:
		partSize = DefaultPartSize
	case partSize < minPartSize:
		return nil, fmt.Errorf("s3: part size %d is below the S3 minimum of %d", partSize, minPartSize)
	}
	maxRetries := opts.MaxRetries
	if maxRetries <= 0 {
		maxRetries = DefaultMaxRetries
	}
	region := opts.Region
	if region == "" {
		region = os.Getenv("AWS_REGION")
	}
	if region == "" {
		region = os.Getenv("AWS_DEFAULT_REGION")
	}
	transport := opts.Transport
	if transport == nil {
		transport, err = newTransport(secure)
		if err != nil {
			return nil, err
		}
	}

	client, err := minio.New(endpoint, &minio.Options{
		Creds:      newCredentials(opts),
		Secure:     secure,
		Region:     region,
		Transport:  transport,
		MaxRetries: maxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3: endpoint %q: %v", opts.Endpoint, err)
	}
	s := &Store{client: client, bucket: opts.Bucket, prefix: prefix, partSize: uint64(partSize)}
	if err := s.ensureBucket(ctx, region); err != nil {
		return nil, err
	}
	return s, nil
}

// parseEndpoint strips an optional scheme from endpoint and checks what is
// left is a bare host[:port].
func parseEndpoint(endpoint string, secure bool) (string, bool, error) {
	if endpoint == "" {
		return "", false, errors.New("s3: no endpoint")
	}
	host := endpoint
	switch {
	case strings.HasPrefix(host, "https://"):
		host, secure = strings.TrimPrefix(host, "https://"), true
	case strings.HasPrefix(host, "http://"):
		if secure {
			return "", false, fmt.Errorf("s3: endpoint %q is http:// but Secure is set", endpoint)
		}
		host = strings.TrimPrefix(host, "http://")
	case strings.Contains(host, "://"):
		return "", false, fmt.Errorf("s3: endpoint %q: unknown scheme (want host[:port])", endpoint)
	}
	host = strings.TrimSuffix(host, "/")
	if host == "" || strings.ContainsAny(host, "/?#@ ") {
		return "", false, fmt.Errorf("s3: endpoint %q: want host[:port], no path", endpoint)
	}
	if strings.Contains(host, ":") && !strings.HasSuffix(host, "]") {
		if _, port, err := net.SplitHostPort(host); err != nil || port == "" {
			return "", false, fmt.Errorf("s3: endpoint %q: bad host:port", endpoint)
		}
	}
	return host, secure, nil
}

// newCredentials returns the static credentials in opts, or else a chain
// over the usual environment variables and the AWS shared credentials file.
func newCredentials(opts Options) *credentials.Credentials {
	if opts.AccessKey != "" {
		return credentials.NewStaticV4(opts.AccessKey, opts.SecretKey, opts.SessionToken)
	}
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
		&credentials.EnvMinio{},
	})
}

// newTransport tunes minio-go's default transport for many parallel
// requests for small objects against one endpoint.
func newTransport(secure bool) (*http.Transport, error) {
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("s3: transport: %v", err)
	}
	tr.DialContext = (&net.Dialer{
		Timeout:   10 * time.Second, // a host that does not answer is down
		KeepAlive: 30 * time.Second,
	}).DialContext
	// The default (16 per host) makes a burst of 32 parallel chunk puts
	// close and redial half its connections on every round.
	tr.MaxIdleConns = 1024
	tr.MaxIdleConnsPerHost = 256
	tr.IdleConnTimeout = 90 * time.Second
	tr.TLSHandshakeTimeout = 10 * time.Second
	// Time from the end of the request body to the response headers: the
	// server has everything and only has to commit (or start sending a
	// GET). A server that stalls this long is treated as unavailable.
	tr.ResponseHeaderTimeout = 30 * time.Second
	tr.ExpectContinueTimeout = time.Second
	return tr, nil
}

// ensureBucket creates the bucket if it does not exist.
func (s *Store) ensureBucket(ctx context.Context, region string) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return translate(ctx, "check bucket", s.bucket, err)
	}
	if ok {
		return nil
	}
	err = s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: region})
	if err != nil {
		// Another process may have created it in the meantime.
		switch minio.ToErrorResponse(err).Code {
		case "BucketAlreadyOwnedByYou":
			return nil
		case "BucketAlreadyExists":
			return fmt.Errorf("s3: create bucket %s: owned by another account: %v", s.bucket, err)
		}
		return translate(ctx, "create bucket", s.bucket, err)
	}
	return nil
}

// nameSuffix ends every object name. MinIO cannot list an object "x" and
// objects under "x/" at once (it stores both as directories: a recursive
// listing silently skips everything below "x/"), but the backend contract
// lets "x" and "x/y" coexist. '~' is outside the key alphabet, so with it
// no object name is ever a directory of another; it is also unreserved in
// URLs, so names need no escaping. AWS S3 does not need it, but one layout
// everywhere keeps a bucket readable by any server it is copied to.
const nameSuffix = "~"

// object returns the object name of a key.
func (s *Store) object(key string) string { return s.prefix + key + nameSuffix }

// keyOf returns the key of an object name, or false for an object that no
// Store wrote.
func (s *Store) keyOf(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, s.prefix)
	if !ok {
		return "", false
	}
	key, ok := strings.CutSuffix(rest, nameSuffix)
	if !ok || backend.ValidateKey(key) != nil {
		return "", false
	}
	return key, true
}

// Put implements backend.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := backend.ValidateKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("s3: put %s: negative size %d", key, size)
	}
	body := &sizedReader{r: r, remaining: size, size: size}
	defer body.close()
	var src io.Reader = body
	if size == 0 {
		// An empty body is never read; check for extra bytes up front.
		if _, err := body.Read(nil); err != nil && err != io.EOF {
			return fmt.Errorf("s3: put %s: %w", key, err)
		}
		src = bytes.NewReader(nil)
	}
	_, err := s.client.PutObject(ctx, s.bucket, s.object(key), src, size, minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    s.partSize,
		NumThreads:  1,
	})
	body.close() // no stale reads of r after Put returns, and failure() is final
	if err != nil {
		// The caller's reader failing (or yielding the wrong size) is not
		// the service's fault: report it as it is.
		if rerr := body.failure(); rerr != nil {
			return fmt.Errorf("s3: put %s: %w", key, rerr)
		}
		return translate(ctx, "put", key, err)
	}
	// Success implies the body was read to the end, so sizedReader has
	// checked the size: it fails the Read that would complete a wrong body.
	return nil
}

// Open implements backend.Store.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := backend.ValidateKey(key); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("%w: %s: offset %d", backend.ErrInvalidRange, key, offset)
	}
	if length == 0 {
		// Nothing to read, but the object and the offset must be checked.
		return s.emptyRange(ctx, key, offset, length)
	}
	var opts minio.GetObjectOptions
	switch {
	case length > 0:
		// offset+length-1 may run past the end: S3 cuts the range there.
		end := offset + length - 1
		if end < offset { // overflow
			end = 1<<63 - 1
		}
		err := opts.SetRange(offset, end)
		if err != nil {
			return nil, fmt.Errorf("s3: open %s: %v", key, err)
		}
	case offset > 0:
		if err := opts.SetRange(offset, 0); err != nil { // bytes=offset-
			return nil, fmt.Errorf("s3: open %s: %v", key, err)
		}
	}
	core := minio.Core{Client: s.client}
	body, _, _, err := core.GetObject(ctx, s.bucket, s.object(key), opts)
	if err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusRequestedRangeNotSatisfiable {
			// offset >= size: empty at the end, an error beyond it.
			return s.emptyRange(ctx, key, offset, length)
		}
		return nil, translate(ctx, "open", key, err)
	}
	return &bodyReader{ctx: ctx, key: key, body: body}, nil
}

// emptyRange resolves a read that returns no bytes: an empty reader if the
// object exists and offset is within it, else the error.
func (s *Store) emptyRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	info, err := s.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	n, err := backend.ClampRange(key, info.Size, offset, length)
	if err != nil {
		return nil, err
	}
	if n != 0 {
		// The object grew between the GET and the Stat; report it as a
		// transient failure rather than an empty read.
		return nil, fmt.Errorf("s3: open %s: %w: object changed during open", key, backend.ErrUnavailable)
	}
	return io.NopCloser(bytes.NewReader(nil)), nil
}

// Stat implements backend.Store.
func (s *Store) Stat(ctx context.Context, key string) (backend.Info, error) {
	if err := backend.ValidateKey(key); err != nil {
		return backend.Info{}, err
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.object(key), minio.StatObjectOptions{})
	if err != nil {
		return backend.Info{}, translate(ctx, "stat", key, err)
	}
	return backend.Info{Key: key, Size: oi.Size}, nil
}

// Delete implements backend.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := backend.ValidateKey(key); err != nil {
		return err
	}
	err := s.client.RemoveObject(ctx, s.bucket, s.object(key), minio.RemoveObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).Code != "NoSuchKey" {
		return translate(ctx, "delete", key, err)
	}
	return nil
}

// List implements backend.Store.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := backend.ValidatePrefix(prefix); err != nil {
		return err
	}
	// Cancelling stops minio-go's listing goroutine when fn fails.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	objects := s.client.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{
		Prefix:    s.prefix + prefix,
		Recursive: true,
	})
	for oi := range objects {
		if oi.Err != nil {
			return translate(ctx, "list", prefix, oi.Err)
		}
		key, ok := s.keyOf(oi.Key)
		if !ok {
			continue // not written by a Store
		}
		if err := fn(backend.Info{Key: key, Size: oi.Size}); err != nil {
			return err
		}
	}
	// A cancelled context closes the channel early without an error.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3: list %s: %w", prefix, err)
	}
	return nil
}
