package index

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// DB is the index. It is safe for concurrent use.
type DB struct {
	db  *badger.DB
	dir string
	log *slog.Logger

	bigCommit sync.Mutex // serialises commits and deletes of layers over MaxTxnChunks

	pendMu     sync.Mutex
	pendHits   map[digest.Digest]Hits // step key → hits not yet in the index
	pendAccess map[digest.Digest]time.Time

	// faultAfter is the seam of the crash tests: when it is positive, it
	// counts down one per write transaction, and the transaction that
	// takes it to zero and every one after it fail without committing.
	faultAfter    atomic.Int64
	txnChunks     atomic.Int64 // see SetMaxTxnChunks
	collectCutoff atomic.Int64 // see SetCollecting

	stop    chan struct{}
	flushed chan struct{}
	once    sync.Once
	closed  atomic.Bool
	lock    sync.RWMutex // held shared by flushes, exclusively by Close and Rebuild

	q           quarantine
	stepLayerFn func(v []byte) digest.Digest // see SetStepLayer
}

// flushInterval is how often hit counts and access times reach the index: a
// lookup does not pay for a synced write.
const flushInterval = 2 * time.Second

// vlogGCInterval is how often the value log is garbage-collected. Recipes
// of deleted layers live in the value log (see badgerOptions) and only its
// GC returns their space.
const vlogGCInterval = 10 * time.Minute

// Open opens (or creates) the index in dir. An index left behind by a crash
// is recovered by Badger on open; nothing else is needed, since the index
// never names data the backend lacks.
func Open(dir string, log *slog.Logger) (*DB, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := badger.Open(badgerOptions(dir, log))
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w: %w", dir, cerr.ErrUnavailable, err)
	}
	if err := checkFormat(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open index %s: %w", dir, err)
	}
	x := &DB{db: db, dir: dir, log: log,
		pendHits:   make(map[digest.Digest]Hits),
		pendAccess: make(map[digest.Digest]time.Time),
		stop:       make(chan struct{}),
		flushed:    make(chan struct{}),
	}
	if err := x.loadQuarantine(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open index %s: %w", dir, err)
	}
	go x.flushLoop()
	return x, nil
}

// Dir is the directory the index lives in.
func (x *DB) Dir() string { return x.dir }

// Close flushes pending hit counts and access times and closes the index.
func (x *DB) Close() error {
	var err error
	x.once.Do(func() {
		close(x.stop)
		<-x.flushed
		x.lock.Lock()
		x.closed.Store(true)
		x.lock.Unlock()
		if e := x.db.Close(); e != nil {
			err = fmt.Errorf("close index: %w", e)
		}
	})
	return err
}

// FailAfter makes the index's write transactions fail, without
// committing, from the n-th one on (n ≥ 1); 0 turns the fault off. It is
// the crash tests' seam: after a fault they abandon the index as a crash
// would and reopen a copy of it.
func (x *DB) FailAfter(n int64) { x.faultAfter.Store(n) }

// ErrInjected is the error of a write that FailAfter failed.
var ErrInjected = errors.New("index: injected fault")

func (x *DB) fault() error {
	for {
		n := x.faultAfter.Load()
		if n <= 0 {
			return nil
		}
		if n == 1 {
			return fmt.Errorf("%w: %w", cerr.ErrUnavailable, ErrInjected)
		}
		if x.faultAfter.CompareAndSwap(n, n-1) {
			return nil
		}
	}
}

// checkFormat refuses an index written in another format and marks a new
// one, or one of the format this version upgrades, with Format.
func checkFormat(db *badger.DB) error {
	var found string
	empty := true
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(idxFormat)
		if err == nil {
			return item.Value(func(v []byte) error { found = string(v); return nil })
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		it.Rewind()
		empty = !it.Valid()
		return nil
	})
	switch {
	case err != nil:
		return translate("read format", err)
	case found == Format:
		return nil
	case found == formatUpgraded:
		// Read as it is: only the marker changes.
	case found != "":
		return fmt.Errorf("%w: index format %q, this cairn reads %q", cerr.ErrFailedPrecondition, found, Format)
	case !empty:
		return fmt.Errorf("%w: index written by an older cairn (one backend object per chunk), this one stores chunks in packs: start from an empty data directory", cerr.ErrFailedPrecondition)
	}
	return translate("write format", db.Update(func(txn *badger.Txn) error {
		return txn.Set(idxFormat, []byte(Format))
	}))
}

// badgerOptions tunes Badger for an index of small values that must not
// take hundreds of MiB: Badger's defaults (five 64 MiB memtables, a 256 MiB
// block cache, 1 GiB value log files) are sized for a database server.
func badgerOptions(dir string, log *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithSyncWrites(true). // a commit the caller saw survives a crash
		WithLogger(badgerLogger{log}).
		// 16 MiB memtables allow 2.4 MiB transactions: a layer commit of
		// MaxTxnChunks (16 000) chunks, 4 GiB at 256 KiB average, fits in one.
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBaseTableSize(4 << 20).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		WithValueThreshold(4 << 10). // recipes go to the value log, keys stay small
		WithNumCompactors(2)
}

// badgerLogger sends Badger's warnings and errors to slog; its info and
// debug chatter is dropped.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(f string, a ...any) {
	l.log.Error("badger", "msg", fmt.Sprintf(f, a...))
}
func (l badgerLogger) Warningf(f string, a ...any) {
	l.log.Warn("badger", "msg", fmt.Sprintf(f, a...))
}
func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}

// translate turns a Badger error into the core's vocabulary. What reaches
// here is an index that cannot serve (closed, out of space) or a
// transaction too large; errors that already carry a sentinel (a corrupt
// value is ErrDataLoss) keep it.
func translate(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, badger.ErrTxnTooBig):
		return fmt.Errorf("%s: %w: too many entries for one index transaction: %w", op, cerr.ErrResourceExhausted, err)
	case errors.Is(err, badger.ErrDBClosed):
		return fmt.Errorf("%s: %w", op, cerr.ErrClosed)
	case errors.Is(err, badger.ErrKeyNotFound):
		return fmt.Errorf("%s: %w", op, cerr.ErrNotFound)
	case cerr.Known(err):
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: index: %w: %w", op, cerr.ErrUnavailable, err)
}

// update runs fn in a read-write transaction, retrying on conflicts with
// concurrent transactions (pushes sharing chunks), and translates errors.
func (x *DB) update(op string, fn func(txn *badger.Txn) error) error {
	for attempt := 0; ; attempt++ {
		err := x.db.Update(func(txn *badger.Txn) error {
			if err := fn(txn); err != nil {
				return err
			}
			return x.fault()
		})
		if errors.Is(err, badger.ErrConflict) && attempt < 100 {
			time.Sleep(time.Duration(attempt) * time.Millisecond)
			continue
		}
		return translate(op, err)
	}
}

// Tx is a read-only view of the index, for callers that read several
// entries and need them to agree.
type Tx struct {
	txn *badger.Txn
	x   *DB
}

// View runs fn in a read-only transaction.
func (x *DB) View(op string, fn func(tx *Tx) error) error {
	return translate(op, x.db.View(func(txn *badger.Txn) error { return fn(&Tx{txn, x}) }))
}

// get reads key into fn; found is false if there is no such key.
func get(txn *badger.Txn, key []byte, fn func(v []byte) error) (found bool, err error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, item.Value(fn)
}

func has(txn *badger.Txn, key []byte) (bool, error) {
	_, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

// flushLoop writes pending hits and access times every flushInterval and
// once more when the index closes, and garbage-collects Badger's value log
// every vlogGCInterval.
func (x *DB) flushLoop() {
	defer close(x.flushed)
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	lastGC := time.Now()
	for {
		select {
		case <-t.C:
			if err := x.Flush(); err != nil {
				x.log.Warn("cache: flush hit counts", "err", err)
			}
			if time.Since(lastGC) >= vlogGCInterval {
				x.vlogGC()
				lastGC = time.Now()
			}
		case <-x.stop:
			if err := x.Flush(); err != nil {
				x.log.Warn("cache: flush hit counts", "err", err)
			}
			return
		}
	}
}

// vlogGC rewrites value log files that are at least half garbage, until
// none is left.
// RunValueLogGC is vlogGC, for tests.
func (x *DB) RunValueLogGC() { x.vlogGC() }

func (x *DB) vlogGC() {
	x.lock.RLock()
	defer x.lock.RUnlock()
	if x.closed.Load() {
		return
	}
	for range 100 {
		err := x.db.RunValueLogGC(0.5)
		if err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				x.log.Warn("cache: value log gc", "err", err)
			}
			return
		}
	}
}
