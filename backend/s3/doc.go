// Package s3 is a backend.Store over any S3-compatible object store (AWS S3,
// MinIO, Ceph RGW) through github.com/minio/minio-go/v7.
//
// New connects, checks the bucket and creates it if it is missing. Key k is
// stored as the object named Options.Prefix + k + "~" (so several stores can
// share a bucket under different prefixes; the "~" lets "x" and "x/y" both
// be objects on MinIO, see nameSuffix). Objects without the suffix are not
// the Store's and List ignores them.
//
// How the backend contract maps onto S3:
//
//   - Put always hands minio-go the real size. Objects up to Options.PartSize
//     go up in one PUT, streamed (nothing is buffered); larger ones as a
//     multipart upload with one part buffered at a time, so a Put holds at
//     most PartSize bytes of memory. The reader is wrapped so that a short
//     or long stream fails the request before the last byte is sent: S3
//     never commits a PUT whose body is cut short, and a multipart upload is
//     only visible after CompleteMultipartUpload, so a failed Put leaves
//     nothing behind (an aborted multipart upload whose abort also failed,
//     for example because the server died, leaves invisible parts that a
//     bucket lifecycle rule for incomplete uploads reclaims).
//   - Open issues one ranged GET. A 416 from the server is resolved with a
//     Stat into the contract's "offset == size is empty, beyond is
//     ErrInvalidRange".
//   - Every vendor and transport error goes through one function, translate:
//     NoSuchKey and NoSuchBucket become backend.ErrNotFound; 5xx, throttling,
//     refused or reset connections, bodies cut short and timeouts become
//     backend.ErrUnavailable; context errors stay context errors.
//   - minio-go's own retries are off by default (Options.MaxRetries):
//     retrying is the job of the backend/retry decorator, so that one budget
//     governs it and a dead server is reported promptly.
//
// A Store is safe for concurrent use. Its HTTP transport keeps up to 256
// idle connections to the endpoint so that many parallel small-object
// requests reuse connections instead of redialling.
package s3
