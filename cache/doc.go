// Package cache is cairn's core: a chunked, deduplicated, compressed layer
// store and the build-step cache on top of it, kept in a backend.Store (the
// source of truth) and indexed by a Badger database (the fast index).
//
// # Pieces
//
// The facade (this package) wires the internal packages and owns the
// layer and step operations; each internal package has one job, and
// dependencies go one way: chunks → index → pack → cerr (resemble stands
// alone).
//
//   - internal/pack: the stored format of chunks (records of one chunk or
//     frames of several, pack table and footer). pack.Seal re-reads what
//     it wrote before a pack is uploaded; pack.ReadTable learns a pack's
//     contents from one read of its tail.
//   - internal/index: the Badger schema and the only importer of Badger:
//     keys and values, reference-count transactions (commits and deletes
//     too big for one transaction go in batches), hit and access batching,
//     the rebuild that Reindex drives, and FailAfter, the crash tests'
//     seam.
//   - internal/resemble: sketches of chunks that tell which resemble each
//     other, and the order compaction writes them in; pure functions.
//   - internal/chunks: chunk sessions that gather new chunks into packs of
//     about 4 MiB (at most 3 in memory per session); flights, so that
//     concurrent sessions store a new chunk once (a waiter has the pack
//     holding it written at once); leases, the garbage collector's fence;
//     and the recipe reader, which looks chunks up a window at a time,
//     reads neighbours in one pack with one ranged read (runs), and
//     decompresses and verifies each chunk (a mismatch is ErrDataLoss,
//     never wrong bytes), decoding a frame once for its chunks; and the
//     Compactor, which writes packs of frames.
//   - push.go: Push reads a layer stream once. The caller's goroutine cuts
//     chunks (chunker, content-defined) and copies each into a pooled
//     buffer; a hasher goroutine computes the layer's SHA-256 over the
//     chunks in order; up to Options.Concurrency workers hash each chunk
//     (BLAKE3) and hand it to the push's chunk session. Workers that are
//     all busy stop the reading, so backpressure reaches the client. When
//     every pack is durable, the layer manifest is written to the backend
//     and then the layer record and all its chunk references are committed
//     in one index transaction.
//   - chunks.go: the client-side chunking path: MissingChunks, PutChunk and
//     ChunkUpload (each chunk verified against its hash), Commit (the
//     layer digest is verified by reading the chunks back before the layer
//     becomes visible).
//   - pull.go: Open streams a byte range of a layer; ReadChunk one chunk.
//   - layers.go: Stat, List (paged), Delete, Chunks (the recipe), Stats.
//   - steps.go: RecordStep, LookupStep and LookupChain over keys derived by
//     package stepkey; decoded records are memoized.
//   - reindex.go: Reindex rebuilds the index from the backend alone,
//     streaming.
//   - format.go: the facade's stored formats (layer manifests; step
//     records are in steps.go) and where objects live in the backend.
//
// # The GC fence
//
// A chunk no committed layer references is garbage once its grace period
// is over, unless a push or upload is about to commit a reference to it.
// Such a session holds a lease on the chunk from before it looks the chunk
// up until it ends; Commit leases its recipe before checking it. The
// collector deletes index entries only inside chunks.Store.Fence, which
// sees every lease and lets none be taken meanwhile. Every commit also
// touches the entries it references (Added = now), for the grace period.
//
// # Rules
//
// Backend first, index second: an index entry is written only after the
// data it names is durable in the backend, and a layer's index record only
// after all its chunks and its manifest. So a crash at any point leaves no
// index entry naming missing data; it can leave backend objects the index
// does not know (packs of a push that never committed), which the garbage
// collector or Reindex deals with. Deletes go the other way: index first.
//
// Reference counts are exact: the refs of chunk c is the number of recipe
// entries, over all committed layers, that name c (a chunk that occurs
// three times in one layer holds three references). A layer commit adds
// them and Delete removes them in the same transaction as the layer record,
// except for layers of more than index.MaxTxnChunks (16 000) distinct chunks,
// which do not fit in one transaction: their references are added before
// the record is written and removed after it is deleted, so that a crash in
// between leaves counts too high (chunks kept longer), never too low;
// Reindex makes them exact again.
// A chunk with zero references is durable but unused: uploaded ahead of a
// commit, left by a push that failed, or by a delete. Reclaiming them is
// the garbage collector's job (not written yet): a pack whose chunks all
// have no references can be deleted; a pack with some can be rewritten
// with the live ones, their index entries moved to the new pack before the
// old one goes. It must also spare chunks a running push or upload may
// still reference: those a session leases (see The GC fence), and those
// used within a grace period (an entry's Added is when the chunk was
// added, last referenced by a commit, or found by MissingChunks or a
// session). A pack the index does not name is not garbage at once: a
// push's packs are named by no entry until its commit (and other sessions
// may commit references into them through flights). It is garbage once it
// is older than the longest push plus a grace period and no chunk in its
// table is leased (checked inside the fence); a failed push or two
// sessions racing past the flights leave such packs.
//
// # Backend layout
//
//	packs/<first 2 hex>/<32 hex>   a pack of chunks, named by 16 random
//	                               bytes: records back to back (each a
//	                               16-byte header: magic "CRNC", format
//	                               version, hash algorithm, codec,
//	                               uncompressed size; then one zstd frame
//	                               of one chunk, as pushes write them, or of
//	                               several, as compaction writes them), then
//	                               a table of (chunk hash, offset, length,
//	                               size, offset in the frame, frame size)
//	                               and a 16-byte footer (magic "CRNP",
//	                               version 2; version 1, without frames, is
//	                               still read); see package pack
//	layers/sha256/<64 hex>         layer manifest, JSON: digest, size, media
//	                               type, created, recipe (chunk hashes, sizes)
//	steps/<64 hex of the key>      step record, JSON (see stepJSON)
//
// # Index keys (Badger)
//
//	v/format                            indexFormat: Open refuses others
//	c/<32 raw bytes of the chunk hash>  uvarint size, stored size, refs,
//	                                    added (Unix seconds), offset in
//	                                    the pack; 16 bytes of pack name;
//	                                    in a frame, uvarint offset in it
//	                                    and frame size
//	l/<layer digest string>             layer record: version, size, stored
//	                                    size, media type, created, recipe
//	a/<layer digest string>             last access, varint Unix nanoseconds
//	k/<step key digest string>          step record, the JSON of steps/
//	h/<step key digest string>          hit count and last hit
//	z/<8 bytes of a feature>            compaction's hint: a compacted pack
//	                                    holding a chunk with that feature
//
// The index is opened with synced writes: a commit that returned survives a
// crash, and Badger recovers its own logs on the next Open. Hit counts and
// access times are batched in memory and written every few seconds and on
// Close; a crash loses at most those.
//
// # Formats chosen by measurement
//
// Chunks are named by BLAKE3 (package chunkid says why), stored in packs of
// about 4 MiB (see chunks.PackTarget) and compressed with zstd at SpeedFastest
// (see the chunks package), without zstd's frame checksum; compaction
// (compact.go) rewrites cold packs into frames of about 4 MiB of chunks that
// resemble each other (package resemble) at SpeedBestCompression
// (chunks.FrameTarget); bench/RESULTS.md has the figures.
package cache
