package s3raw

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestRun against the MinIO that scripts/test.sh starts (skipped without).
func TestRun(t *testing.T) {
	ep := os.Getenv("CAIRN_TEST_S3_ENDPOINT")
	if ep == "" {
		t.Skip("CAIRN_TEST_S3_ENDPOINT not set (scripts/test.sh starts MinIO and sets it)")
	}
	dir := t.TempDir()
	var files []string
	var want int64
	for i, n := range []int{0, 1, 20 << 20} { // empty, one byte, multipart
		p := filepath.Join(dir, string(rune('a'+i)))
		if err := os.WriteFile(p, make([]byte, n), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
		want += int64(n)
	}
	res, err := Run(context.Background(), Options{
		Endpoint: ep, Bucket: "s3raw-test",
		AccessKey: os.Getenv("CAIRN_TEST_S3_ACCESS_KEY"), SecretKey: os.Getenv("CAIRN_TEST_S3_SECRET_KEY"),
	}, files)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 3 || res.Bytes != want || res.PutSeconds <= 0 || res.GetSeconds <= 0 {
		t.Errorf("got %+v, want 3 files, %d bytes, positive times", res, want)
	}
}

func TestRunNeedsEndpoint(t *testing.T) {
	if _, err := Run(context.Background(), Options{Bucket: "b"}, nil); err == nil {
		t.Error("no endpoint: want an error")
	}
}
