package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cairnbuild/cairn/bench/s3raw"
)

// newBenchS3Cmd times raw S3 PUT and GET of files, the baseline that
// cairn's push and pull over the S3 backend are compared with.
func newBenchS3Cmd(a *app) *cobra.Command {
	var (
		opt      s3raw.Options
		asJSON   bool
		insecure bool
		du       bool
	)
	cmd := &cobra.Command{
		Use:   "s3 FILE... | s3 --du",
		Short: "Time raw S3 PUT and GET of files (no cairn), the baseline for push and pull",
		Long: `S3 PUTs each file as one object with minio-go, one after the other, then
GETs each back, and prints bytes, seconds and MB/s for both. The objects are
deleted afterwards unless --keep.

With --du and no files it prints what the bucket (under --prefix) holds
instead: objects and bytes, e.g. what cairn serve stored there.`,
		Example: `  cairn bench s3 --s3-endpoint 127.0.0.1:9000 --s3-insecure --s3-bucket bench layers/*.tar
  cairn bench s3 --s3-endpoint 127.0.0.1:9000 --s3-insecure --s3-bucket cairn --du --prefix ""`,
	}
	env := func(names ...string) string {
		for _, n := range names {
			if v := a.getenv(n); v != "" {
				return v
			}
		}
		return ""
	}
	fs := cmd.Flags()
	fs.StringVar(&opt.Endpoint, "s3-endpoint", env("CAIRN_S3_ENDPOINT"), "S3 endpoint host:port [$CAIRN_S3_ENDPOINT]")
	fs.StringVar(&opt.Bucket, "s3-bucket", env("CAIRN_S3_BUCKET"), "bucket (created if missing) [$CAIRN_S3_BUCKET]")
	fs.StringVar(&opt.AccessKey, "s3-access-key", env("CAIRN_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"), "access key [$CAIRN_S3_ACCESS_KEY, $AWS_ACCESS_KEY_ID]")
	fs.BoolVar(&insecure, "s3-insecure", false, "talk plain HTTP to the endpoint instead of HTTPS (as cairn serve's flag)")
	fs.StringVar(&opt.Prefix, "prefix", "s3raw/", "key prefix of the objects")
	fs.BoolVar(&opt.Keep, "keep", false, "leave the objects in the bucket")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
	fs.BoolVar(&du, "du", false, "print the objects and bytes under --prefix instead of timing files")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		// The secret only from the environment, never on a command line.
		opt.SecretKey = env("CAIRN_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
		opt.Secure = !insecure && !strings.HasPrefix(opt.Endpoint, "http://")
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
			u, err := s3raw.BucketUsage(cmd.Context(), opt)
			if err != nil {
				return err
			}
			return show(u, fmt.Sprintf("%d objects, %d bytes (%s)", u.Objects, u.Bytes, humanBytes(u.Bytes)))
		}
		if len(args) == 0 {
			return errors.New("name the files to PUT and GET (or --du)")
		}
		res, err := s3raw.Run(cmd.Context(), opt, args)
		if err != nil {
			return err
		}
		return show(res, fmt.Sprintf("%d files, %s: PUT %.2f s (%.1f MB/s), GET %.2f s (%.1f MB/s)",
			res.Files, humanBytes(res.Bytes), res.PutSeconds, res.PutMBps, res.GetSeconds, res.GetMBps))
	}
	return cmd
}

// newBenchGenCmd writes seeded pseudo-random bytes, a stand-in for a large
// layer: `cairn bench gen 4G | cairn push -`. Far faster than /dev/urandom.
func newBenchGenCmd(a *app) *cobra.Command {
	var seed uint64
	cmd := &cobra.Command{
		Use:     "gen SIZE",
		Short:   "Write SIZE bytes of seeded pseudo-random data to stdout (e.g. 4G), for big-layer tests",
		Example: `  cairn bench gen 4G | cairn push - --json`,
		Args:    cobra.ExactArgs(1),
	}
	cmd.Flags().Uint64Var(&seed, "seed", 1, "seed: the same seed and size give the same bytes")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		n, err := benchParseSize(args[0])
		if err != nil {
			return err
		}
		var key [32]byte
		binary.LittleEndian.PutUint64(key[:], seed)
		rng := rand.NewChaCha8(key)
		w := bufio.NewWriterSize(a.stdout, 1<<20)
		buf := make([]byte, 1<<20)
		for n > 0 {
			if err := cmd.Context().Err(); err != nil {
				return err
			}
			b := buf[:min(int64(len(buf)), n)]
			rng.Read(b)
			if _, err := w.Write(b); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			n -= int64(len(b))
		}
		return w.Flush()
	}
	return cmd
}
