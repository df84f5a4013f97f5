// Package density holds the groundwork measurement for issue 17: how many
// bytes cairn's unique chunks take when each is its own zstd frame (today's
// format) against frames of several consecutive chunks, at each zstd level,
// and with S2 as an ingest codec; what each costs in compression and
// decompression speed; and what a single-chunk read pays for decoding a
// whole grouped frame.
//
// The corpus is five "releases" of cairn itself, built from what is on the
// machine (there is no network): for each release a module-cache layer (the
// directories of the modules in cairn's go.mod, from $(go env GOMODCACHE),
// each at the release's version: release i of a module with n versions in
// the cache takes the version n-5+i in semver order, clamped to the oldest,
// so dependencies are bumped over the releases as a service's are) and a
// source layer (`git archive` of the repository at commits 10 apart). Tars
// are deterministic (sorted, mtime 0, uid/gid 0).
//
// The measurement is TestDensity, skipped with -short and unless
// CAIRN_DENSITY=1:
//
//	CAIRN_DENSITY=1 go test -run TestDensity -v -timeout 30m ./bench/density
//
// It prints a Markdown table; bench/RESULTS.md has the figures.
package density
