package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/bench/s3raw"
	"github.com/cairnbuild/cairn/cmd/internal/storage"
)

// newS3Cmd is `cairn-bench s3`: raw S3 PUT and GET of files, the baseline
// that cairn's push and pull over the S3 backend are compared with.
func newS3Cmd(a *app) *cobra.Command {
	var (
		s3f    storage.S3
		keep   bool
		asJSON bool
		du     bool
	)
	cmd := &cobra.Command{
		Use:   "s3 FILE... | s3 --du",
		Short: "Time raw S3 PUT and GET of files (no cairn), the baseline for push and pull",
		Long: `S3 PUTs each file as one object with minio-go, one after the other, then
GETs each back, and prints bytes, seconds and MB/s for both. The objects go
under s3raw/ (below --s3-prefix) and are deleted afterwards unless --keep.

With --du and no files it prints what the bucket holds under --s3-prefix
instead: objects and bytes, e.g. what cairn serve stored there.

The --s3-* flags are cairn serve's, with the same environment twins, so the
server's settings name the server's bucket. Without --s3-access-key the keys
come from where the server finds them: AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, or MINIO_ROOT_USER and
MINIO_ROOT_PASSWORD. The region is looked up (--s3-region is not used), and
only static keys sign (no --s3-session-token).`,
		Example: `  cairn-bench s3 --s3-endpoint 127.0.0.1:9000 --s3-insecure --s3-bucket bench layers/*.tar
  cairn-bench s3 --s3-endpoint 127.0.0.1:9000 --s3-insecure --s3-bucket cairn --du`,
	}
	fs := cmd.Flags()
	s3f.AddFlags(fs)
	fs.BoolVar(&keep, "keep", false, "leave the objects in the bucket")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
	fs.BoolVar(&du, "du", false, "print the objects and bytes under --s3-prefix instead of timing files")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if s3f.Endpoint == "" {
			return errors.New("name the bucket: --s3-endpoint and --s3-bucket")
		}
		if err := s3f.Check(); err != nil {
			return err
		}
		if s3f.SessionToken != "" {
			return errors.New("--s3-session-token: the raw baseline signs with static keys only")
		}
		accessKey, secretKey, err := staticKeys(&s3f)
		if err != nil {
			return err
		}
		prefix := strings.Trim(s3f.Prefix, "/")
		if prefix != "" {
			prefix += "/"
		}
		opt := s3raw.Options{
			Endpoint: s3f.Endpoint, Bucket: s3f.Bucket, Secure: s3f.Secure(),
			AccessKey: accessKey, SecretKey: secretKey,
			Prefix: prefix + "s3raw/", Keep: keep,
		}
		show := func(v any, text string) error {
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			_, err := fmt.Fprintln(a.stdout, text)
			return err
		}
		if du {
			if len(args) > 0 {
				return errors.New("--du takes no files")
			}
			opt.Prefix = prefix
			u, err := s3raw.BucketUsage(cmd.Context(), opt)
			if err != nil {
				return err
			}
			return show(u, fmt.Sprintf("%d objects, %d bytes (%s)", u.Objects, u.Bytes, humanize.IBytes(uint64(u.Bytes))))
		}
		if len(args) == 0 {
			return errors.New("name the files to PUT and GET (or --du)")
		}
		res, err := s3raw.Run(cmd.Context(), opt, args)
		if err != nil {
			return err
		}
		return show(res, fmt.Sprintf("%d files, %s: PUT %.2f s (%.1f MB/s), GET %.2f s (%.1f MB/s)",
			res.Files, humanize.IBytes(uint64(res.Bytes)), res.PutSeconds, res.PutMBps, res.GetSeconds, res.GetMBps))
	}
	return cmd
}

// staticKeys returns the keys the raw baseline signs with: the flags', else
// the first found where cairn serve looks without them (backend/s3's
// chain); none found means anonymous requests.
func staticKeys(s *storage.S3) (accessKey, secretKey string, err error) {
	if s.AccessKey != "" {
		return s.AccessKey, s.SecretKey, nil
	}
	v, err := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
		&credentials.EnvMinio{},
	}).GetWithContext(&credentials.CredContext{})
	if err != nil {
		return "", "", fmt.Errorf("s3 credentials: %w", err)
	}
	return v.AccessKeyID, v.SecretAccessKey, nil
}
