// Package fs is the local-directory backend.Store, the blob store of the
// embedded `cairn serve` default.
//
// # Layout
//
// A key's segments become path components under the store's directory. So
// that a key can be both an object and a prefix of other keys, as in S3
// ("x" and "x/y" are independent objects), directories carry a '+' suffix
// that no key may contain: key "chunks/ab/cdef" is the file
// "chunks+/ab+/cdef". Temporary files are "<name>~<16 hex digits>" in the
// directory of the final name; '~' is not a key character either, so a
// temporary file can never be mistaken for an object.
//
// # Safety
//
// Every key is checked with backend.ValidateKey, and every file operation
// goes through an os.Root opened on the store's directory, so no key and no
// symbolic link planted inside the store can reach a file outside it.
//
// # Durability
//
// Put writes a temporary file in the destination directory, fsyncs it,
// renames it over the final name and fsyncs the directory, as restic's local
// backend does: after a crash a key holds either its old object or the
// whole new one. A directory created for a Put is made durable by an fsync
// of its parent before the object goes in. Delete does not fsync: a delete
// undone by a crash leaves an unreferenced object that the next garbage
// collection removes again, which is cheaper than an fsync per deleted
// chunk.
//
// New removes temporary files left by a crash and empty directories, so it
// walks the whole tree once; a Store must be the only user of its
// directory.
package fs
