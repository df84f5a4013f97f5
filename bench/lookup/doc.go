// Package lookup measures step lookups, the call every builder makes first
// and many times per build, against a real server: cache.Open on a Badger
// index in a temporary directory and the fs backend, server.New, gRPC on a
// TCP port of 127.0.0.1, and a lean client (the generated
// cairnv1.CacheServiceClient on one plain grpc.ClientConn: no retries, no
// wrappers, no client-side key computation).
//
// The package has no code outside its tests, which hold one quick hit/miss
// round trip (run by `go test ./...`, so the setup cannot rot) and these
// benchmarks:
//
//   - BenchmarkLookupStep: at 1, 16 and 64 concurrent callers, first an
//     empty unary call on the same server (grpc.health.v1 Health/Check,
//     which passes through the same interceptors as every other call), then
//     cache-hit LookupStep calls over 1000 recorded steps. Each reports
//     calls/s, the p50 and p99 latency in µs and the process's CPU time per
//     call (client and server together); the hit run also reports
//     hit/empty, its rate divided by the empty call's rate just measured,
//     and hit/empty-cpu, the empty call's CPU per call divided by its own.
//   - BenchmarkLookupChain: at 1 and 16 callers, three LookupStep calls one
//     after the other (each on the previous hit's next_parent, as a builder
//     without LookupChain walks a Dockerfile), then one LookupChain of 20
//     steps, all hits. The chain run reports chain/singles3, its time per
//     operation divided by the three singles' (below 1: the chain is
//     faster), and chain/singles3-p50, the same for the median latency.
//   - BenchmarkLookupSecure (issue 16): one cache behind four servers in the
//     same process (plain, TLS only, token only, TLS with a token), 64
//     callers on 4 connections per server, LookupStep hits and LookupChain
//     of 20, the four variants interleaved in rounds of a fixed duration;
//     it reports each variant's rate and CPU per call and its median
//     per-round ratio to plain. Run it with -benchtime 1x; its -secure.*
//     flags set the rounds, the slice, the connections, the callers and
//     the variants. TestSecureRoundTrip checks its setup.
//
// Why the floor: client and server share two cores on these machines and
// their speed varies by ±20 % from minute to minute, so an absolute
// lookups-per-second figure says little. The empty call is what gRPC itself
// costs on this machine, in this run (framing, HTTP/2, the interceptors, a
// round trip over loopback); hit/empty is the share of that ceiling a
// lookup keeps, and it is the figure to compare between runs. At 16 and 64
// callers both calls keep the two cores busy, so hit/empty follows
// hit/empty-cpu, and other load on the machine disturbs the CPU ratio less
// than the rates. Issue 10's goals: hit/empty ≥ 0.8 at 64 callers, p99
// under 2 ms at 16, and chain/singles3 below 1.
//
// Run them one at a time on a quiet machine, for example:
//
//	go test ./bench/lookup -run '^$' -bench . -count 3
//
// The server is started once per test binary and shared by every
// benchmark and every -count round; recording its steps takes a few
// seconds (each record is an fsynced object of the fs backend).
package lookup
