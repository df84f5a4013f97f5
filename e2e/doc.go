// Package e2e holds cairn's end-to-end tests: the real cairn binary, built
// once per run, serving on a loopback TCP port with the fs backend and (when
// scripts/test.sh provides one) a real MinIO, driven by the real CLI as
// subprocesses. Layers are tar files built from the Go tree's sources.
//
// Run them with `go test ./e2e/` (or scripts/test.sh for the MinIO
// variant); -short shrinks the layers. The MinIO variant needs
// CAIRN_TEST_S3_ENDPOINT, CAIRN_TEST_S3_ACCESS_KEY and
// CAIRN_TEST_S3_SECRET_KEY; without them it is skipped, unless CI=true, when
// it fails.
package e2e
