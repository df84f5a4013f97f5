// Package chunker cuts byte streams into content-defined chunks with FastCDC
// (gear rolling hash with normalized chunking), so that an insertion or a
// deletion in a layer moves only the chunk boundaries next to it and the rest
// of the layer deduplicates against what is already stored.
//
// Two ways in: Cut is the pure split function over a byte slice (the
// length of the first chunk), and Chunker streams an io.Reader through a
// buffer the caller supplies, without allocating per chunk. Both apply the
// same rule, so a client that chunks locally and a server that chunks on
// ingest agree on every boundary.
//
// The gear table, the masks and the parameters decide every boundary, so
// they are part of cairn's stored format: V1 names them, and golden vectors
// in testdata/ (32 MiB of seeded input → offset, length and SHA-256 of every
// chunk) guard them. Changing any of them is a new format with a new name,
// never an edit of V1.
//
// The package does no I/O of its own beyond reading the io.Reader it is
// handed, and imports nothing of cairn's.
package chunker
