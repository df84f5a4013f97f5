package chunks

import (
	"sync"

	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
)

// Leases are the garbage collector's fence. A chunk with no references is
// garbage once its grace period is over, except that a push or upload may
// be about to commit a reference to it: a session that found it in the
// index, or is storing it, or a commit about to name it. Each of those
// holds a lease on the chunk from before it looks the chunk up until it
// ends (after its commit, or at its abort). The collector deletes entries
// only inside Fence, which sees every lease and keeps new ones from being
// taken until its deleting transaction is done, so either the lease comes
// first and the collector spares the chunk, or the deletion comes first
// and the session's lookup does not find the chunk and stores it again.
//
// Packs have a fence of their own: a session holds every pack it wrote
// (from before the write, since the pack may exist from then on) and
// every pack holding a chunk it learnt of from another session's flight,
// until it ends. Until then it may make an index entry name the pack, so
// the collector never deletes a held pack, even one that no entry names.
type leases struct {
	mu    sync.Mutex
	n     map[chunkid.ID]int32
	packs map[pack.ID]int32
}

func (l *leases) holdPack(p pack.ID) {
	l.mu.Lock()
	if l.packs == nil {
		l.packs = make(map[pack.ID]int32)
	}
	l.packs[p]++
	l.mu.Unlock()
}

func (l *leases) releasePacks(ps []pack.ID) {
	l.mu.Lock()
	for _, p := range ps {
		if l.packs[p]--; l.packs[p] <= 0 {
			delete(l.packs, p)
		}
	}
	l.mu.Unlock()
}

func (l *leases) take(id chunkid.ID) {
	l.mu.Lock()
	l.n[id]++
	l.mu.Unlock()
}

func (l *leases) release(ids []chunkid.ID) {
	l.mu.Lock()
	for _, id := range ids {
		if l.n[id]--; l.n[id] <= 0 {
			delete(l.n, id)
		}
	}
	l.mu.Unlock()
}

// Lease takes a lease on each of ids and returns the function that
// releases them; call it once, after the commit that references them (or
// instead of it).
func (s *Store) Lease(ids []chunkid.ID) (release func()) {
	s.leases.mu.Lock()
	for _, id := range ids {
		s.leases.n[id]++
	}
	s.leases.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { s.leases.release(ids) }) }
}

// Fence runs fn while no lease can be taken or released; leased reports
// whether a chunk is leased now. The collector deletes index entries only
// inside fn, after checking leased for each.
func (s *Store) Fence(fn func(leased func(chunkid.ID) bool) error) error {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	return fn(func(id chunkid.ID) bool { return s.leases.n[id] > 0 })
}

// FenceGC is Fence for a collector that deletes packs too: held reports
// whether a session holds pack p (see leases).
func (s *Store) FenceGC(fn func(leased func(chunkid.ID) bool, held func(pack.ID) bool) error) error {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	return fn(func(id chunkid.ID) bool { return s.leases.n[id] > 0 },
		func(p pack.ID) bool { return s.leases.packs[p] > 0 })
}

// Leased returns how many chunks are leased now.
func (s *Store) Leased() int {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	return len(s.leases.n)
}
