// Package s3raw measures what an S3 endpoint does without cairn in the way:
// each file PUT as one object (minio-go, real size given, its default
// multipart settings), then each object read back with GET. The bench
// reports cairn's push and pull of the same files as ratios to these.
package s3raw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Options configure Run. Endpoint and Bucket are required.
type Options struct {
	Endpoint  string // host:port; an http:// or https:// prefix sets Secure
	Bucket    string // created if missing
	AccessKey string
	SecretKey string
	Secure    bool // HTTPS
	// Prefix is put in front of every key; default "s3raw/".
	Prefix string
	// Keep leaves the objects in the bucket; by default Run deletes them.
	Keep bool
}

// Result is what Run measured.
type Result struct {
	Files      int     `json:"files"`
	Bytes      int64   `json:"bytes"`
	PutSeconds float64 `json:"put_seconds"`
	GetSeconds float64 `json:"get_seconds"`
	PutMBps    float64 `json:"put_mb_per_sec"`
	GetMBps    float64 `json:"get_mb_per_sec"`
}

// Run PUTs every file, one after the other, then GETs every object back,
// one after the other (as `cairn push` and `cairn pull` of the files in a
// loop do), and times both phases.
func Run(ctx context.Context, opt Options, files []string) (*Result, error) {
	if opt.Endpoint == "" || opt.Bucket == "" {
		return nil, errors.New("s3raw: endpoint and bucket are required")
	}
	c, err := newClient(opt)
	if err != nil {
		return nil, err
	}
	if err := ensureBucket(ctx, c, opt.Bucket); err != nil {
		return nil, err
	}
	prefix := opt.Prefix
	if prefix == "" {
		prefix = "s3raw/"
	}
	keys := make([]string, len(files))
	res := &Result{Files: len(files)}

	start := time.Now()
	for i, f := range files {
		keys[i] = fmt.Sprintf("%s%03d-%s", prefix, i, filepath.Base(f))
		n, err := put(ctx, c, opt.Bucket, keys[i], f)
		if err != nil {
			return nil, err
		}
		res.Bytes += n
	}
	res.PutSeconds = time.Since(start).Seconds()

	start = time.Now()
	var got int64
	for _, k := range keys {
		obj, err := c.GetObject(ctx, opt.Bucket, k, minio.GetObjectOptions{})
		if err != nil {
			return nil, fmt.Errorf("s3raw: get %s: %w", k, err)
		}
		n, err := io.Copy(io.Discard, obj)
		obj.Close()
		if err != nil {
			return nil, fmt.Errorf("s3raw: get %s: %w", k, err)
		}
		got += n
	}
	res.GetSeconds = time.Since(start).Seconds()
	if got != res.Bytes {
		return nil, fmt.Errorf("s3raw: read back %d bytes of %d", got, res.Bytes)
	}
	if res.PutSeconds > 0 {
		res.PutMBps = float64(res.Bytes) / 1e6 / res.PutSeconds
	}
	if res.GetSeconds > 0 {
		res.GetMBps = float64(res.Bytes) / 1e6 / res.GetSeconds
	}
	if !opt.Keep {
		for _, k := range keys {
			if err := c.RemoveObject(ctx, opt.Bucket, k, minio.RemoveObjectOptions{}); err != nil {
				return nil, fmt.Errorf("s3raw: remove %s: %w", k, err)
			}
		}
	}
	return res, nil
}

func put(ctx context.Context, c *minio.Client, bucket, key, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	info, err := c.PutObject(ctx, bucket, key, f, fi.Size(), minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return 0, fmt.Errorf("s3raw: put %s: %w", key, err)
	}
	return info.Size, nil
}

func newClient(opt Options) (*minio.Client, error) {
	endpoint, secure := opt.Endpoint, opt.Secure
	if rest, ok := strings.CutPrefix(endpoint, "https://"); ok {
		endpoint, secure = rest, true
	} else if rest, ok := strings.CutPrefix(endpoint, "http://"); ok {
		endpoint, secure = rest, false
	}
	c, err := minio.New(endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(opt.AccessKey, opt.SecretKey, ""),
		Secure: secure,
	})
	if err != nil {
		return nil, fmt.Errorf("s3raw: %w", err)
	}
	return c, nil
}

func ensureBucket(ctx context.Context, c *minio.Client, bucket string) error {
	exists, err := c.BucketExists(ctx, bucket)
	if err != nil {
		return fmt.Errorf("s3raw: bucket %s: %w", bucket, err)
	}
	if !exists {
		if err := c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
			return fmt.Errorf("s3raw: make bucket %s: %w", bucket, err)
		}
	}
	return nil
}

// Usage is what a bucket holds.
type Usage struct {
	Objects int64 `json:"objects"`
	Bytes   int64 `json:"bytes"`
}

// BucketUsage lists the objects under opt.Prefix ("" here means the whole
// bucket) and adds up their sizes: what a store on S3 costs, measured the
// way the bill is.
func BucketUsage(ctx context.Context, opt Options) (Usage, error) {
	if opt.Endpoint == "" || opt.Bucket == "" {
		return Usage{}, errors.New("s3raw: endpoint and bucket are required")
	}
	c, err := newClient(opt)
	if err != nil {
		return Usage{}, err
	}
	var u Usage
	for obj := range c.ListObjects(ctx, opt.Bucket, minio.ListObjectsOptions{Prefix: opt.Prefix, Recursive: true}) {
		if obj.Err != nil {
			return Usage{}, fmt.Errorf("s3raw: list %s: %w", opt.Bucket, obj.Err)
		}
		u.Objects++
		u.Bytes += obj.Size
	}
	return u, nil
}
