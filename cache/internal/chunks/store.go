// Package chunks stores and reads chunks: chunk sessions that gather new
// chunks into packs (package pack) and index them (package index), flights
// that store a chunk once across concurrent sessions, leases that fence
// chunks in use from the garbage collector, and the recipe reader that
// streams a layer back, verified, with neighbouring chunks read together.
package chunks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/klauspost/compress/zstd"
)

// Options configure a Store.
type Options struct {
	Index   *index.DB
	Backend backend.Store
	// MaxChunk is the largest chunk the store's pushes cut (the chunker's
	// Max); pooled buffers are sized by it. Larger chunks (up to
	// pack.MaxChunkSize) still work, with buffers of their own.
	MaxChunk int
	// Concurrency bounds the chunks one reader fetches ahead.
	Concurrency int
	Logger      *slog.Logger
}

// zstdLevel is the compression level of new chunks. SpeedFastest: on a
// tar of Go sources in 256 KiB chunks (BenchmarkZstdLevel) it stores 6 %
// more bytes than SpeedDefault (ratio 5.93 against 6.28) and compresses
// 16–18 % faster (MEASUREMENTS.md: 23 %), and zstd is most of the CPU of a
// push. The level is not part of the stored format.
const zstdLevel = zstd.SpeedFastest

// PackTarget is the size at which a pack is written; it ends up at most one
// chunk record larger. 4 MiB: see BenchmarkPackSize for the fs backend; on
// S3 a 4 MiB PUT already runs at the backend's streaming rate
// (backend/s3 BenchmarkMinIO), and fewer requests cost less.
const PackTarget = 4 << 20

// Store is the chunk store. It is safe for concurrent use.
type Store struct {
	idx   *index.DB
	store backend.Store
	max   int
	conc  int
	log   *slog.Logger

	enc *zstd.Encoder
	dec *zstd.Decoder

	dataPool  sync.Pool // *[]byte of cap max+decodeSlack (or more): chunk data
	compPool  sync.Pool // *[]byte: compressed chunk records
	packPool  sync.Pool // *[]byte: packs being filled (see getPackBuf)
	runPool   sync.Pool // *[]byte of maxRunBytes (or one larger record): runs being read
	framePool sync.Pool // *[]byte of MaxFrameSize+decodeSlack: decoded frames

	packTarget int
	frameCache int // decoded frames a reader keeps (frameCacheSize)

	flights     flights
	leases      leases
	hooks       Hooks
	quarantines atomic.Int64 // chunks condemned since New
	// frames and frameBytes count the frames decoded since New and their
	// bytes: what reads of compacted chunks cost (see FrameStats).
	frames, frameBytes atomic.Int64
	// singles keeps the frames single-chunk reads (ReadRecord: GetChunks,
	// compaction) decoded last, so that reading a frame's chunks one by
	// one decodes it once.
	singles *frameCache

	// readers counts the goroutines of open recipe readers; Close cancels
	// them.
	readers     sync.WaitGroup
	readersCtx  context.Context
	stopReaders context.CancelFunc
}

// New returns a Store over opts.Index and opts.Backend.
func New(opts Options) (*Store, error) {
	procs := runtime.GOMAXPROCS(0)
	enc, err := NewEncoder(procs)
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	// Frames carry no checksum (see NewEncoder); IgnoreChecksum also skips
	// it in frames that have one. Every chunk is verified by its hash.
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(procs), zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(pack.MaxChunkSize), zstd.IgnoreChecksum(true))
	if err != nil {
		enc.Close()
		return nil, fmt.Errorf("zstd: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{idx: opts.Index, store: opts.Backend, max: opts.MaxChunk, conc: max(opts.Concurrency, 1), log: log,
		enc: enc, dec: dec, packTarget: PackTarget, frameCache: frameCacheSize,
		flights: flights{m: make(map[chunkid.ID]*flight)},
		leases:  leases{n: make(map[chunkid.ID]int32)},
	}
	s.flights.leases = &s.leases
	s.singles = newFrameCache(s, singleFrames)
	s.readersCtx, s.stopReaders = context.WithCancel(context.Background())
	return s, nil
}

// Hooks let tests order events without sleeping. Each is called, if set,
// at the point its name says; it must not block for long.
type Hooks struct {
	// WaitSlot: a session is about to wait for a pack slot (every one of
	// its packsInFlight packs is being written) to store chunk id.
	WaitSlot func(id chunkid.ID)
	// Quarantined: a read found chunk id's copy bad and quarantined it.
	Quarantined func(id chunkid.ID)
}

// SetHooks installs h. Call it before any session starts.
func (s *Store) SetHooks(h Hooks) { s.hooks = h }

// SetPackTarget changes the size at which packs are written; benchmarks
// and tests vary it. Call it before any session starts.
func (s *Store) SetPackTarget(n int) { s.packTarget = n }

// Close stops the open readers' read-ahead (their reads fail with
// ErrClosed) and waits for it, then releases the codecs.
func (s *Store) Close() {
	s.stopReaders()
	s.readers.Wait()
	s.enc.Close()
	s.dec.Close()
}

// NewEncoder returns the chunk encoder, for n concurrent EncodeAll calls.
// No window beyond the largest chunk: each chunk is its own frame, and a
// larger window only costs history buffers. No frame checksum: every chunk
// is verified against its hash when read, and zstd's xxhash over the same
// bytes cost 4 % of a pull.
func NewEncoder(n int) (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstdLevel), zstd.WithEncoderConcurrency(n),
		zstd.WithWindowSize(pack.MaxChunkSize), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
}

// getBuf returns a pooled buffer, empty, of at least n bytes' capacity;
// class is the capacity new buffers get (at least n), so that one pool
// holds buffers of one size and none is dropped for being too small.
// Empty matters: a pack buffer goes back to its pool still holding the
// records of a write that failed, and a pack filled after them would
// start with them (pack.Seal caught that).
func getBuf(p *sync.Pool, n, class int) *[]byte {
	if b, ok := p.Get().(*[]byte); ok {
		if cap(*b) >= n {
			*b = (*b)[:0]
			return b
		}
		p.Put(b)
	}
	b := make([]byte, 0, max(n, class))
	return &b
}

// GetData returns a pooled buffer for n bytes of chunk data (and
// decodeSlack more); give it back with PutData.
func (s *Store) GetData(n int) *[]byte {
	return getBuf(&s.dataPool, n+decodeSlack, s.max+decodeSlack)
}

// PutData returns a buffer from GetData (or from a reader's chunk).
func (s *Store) PutData(b *[]byte) { s.dataPool.Put(b) }

// decodeSlack is the room zstd's decoder wants past the end of its output
// to use its fast copies (16 bytes; compressedBlockOverAlloc in
// klauspost/compress): without it, the last blocks of every chunk decoded
// with the bounds-exact copies, a third of pull's decoding time.
const decodeSlack = 16

// getComp returns a buffer for a chunk record of n uncompressed bytes.
func (s *Store) getComp(n int) *[]byte {
	return getBuf(&s.compPool, pack.HeaderSize+s.enc.MaxEncodedSize(n), pack.HeaderSize+s.enc.MaxEncodedSize(s.max))
}

// getPackBuf returns a buffer for a pack whose first record has n bytes:
// room for the pack target, one more record of the largest chunk, and the
// largest table.
func (s *Store) getPackBuf(n int) *[]byte {
	tail := pack.HeaderSize + s.enc.MaxEncodedSize(s.max) + pack.MaxChunks*pack.EntrySize + pack.FooterSize
	return getBuf(&s.packPool, max(s.packTarget, n)+tail, s.packTarget+tail)
}

// Missing returns those of ids the index does not hold, in the order given,
// each once. The ones it holds are touched (index.DB.Touch): the client
// will commit a layer naming them, and until then only the grace period
// keeps the collector from them.
func (s *Store) Missing(ids []chunkid.ID) ([]chunkid.ID, error) {
	found, err := s.idx.Touch(ids)
	if err != nil {
		return nil, err
	}
	var missing []chunkid.ID
	seen := make(map[chunkid.ID]bool, len(ids))
	for i, id := range ids {
		if !found[i] && !seen[id] {
			missing = append(missing, id)
		}
		seen[id] = true
	}
	return missing, nil
}

// ReadChunk returns chunk id's bytes, verified and decompressed.
func (s *Store) ReadChunk(ctx context.Context, id chunkid.ID) ([]byte, error) {
	ci, ok, err := s.idx.Chunk(id)
	if err != nil {
		return nil, err
	}
	if !ok && s.idx.Quarantined(id) {
		return nil, fmt.Errorf("%w: chunk %s is damaged (quarantined) until a push supplies it again", cerr.ErrDataLoss, id)
	}
	if !ok {
		return nil, fmt.Errorf("chunk %s: %w", id, cerr.ErrNotFound)
	}
	bp, data, err := s.ReadRecord(ctx, id, ci)
	if err != nil {
		return nil, err
	}
	out := append([]byte(nil), data...)
	s.dataPool.Put(bp)
	return out, nil
}

// ReadRecord reads chunk id's record from where ci says and decodes it:
// the data, verified, in a pooled buffer the caller gives back with
// PutData. A chunk in a frame is sliced from the frame, which the store
// keeps among the last few it decoded for such reads.
func (s *Store) ReadRecord(ctx context.Context, id chunkid.ID, ci index.ChunkInfo) (*[]byte, []byte, error) {
	// DecodeChunkInfo bounds Stored more loosely; the buffer below is
	// sized by what the encoder can produce.
	record := int(max(ci.Size, ci.Frame))
	if ci.Stored > pack.HeaderSize+int64(s.enc.MaxEncodedSize(record)) {
		return nil, nil, fmt.Errorf("%w: chunk %s: index entry claims %d bytes stored for %d", cerr.ErrDataLoss, id, ci.Stored, record)
	}
	if ci.Frame != 0 {
		frame, release, err := s.singles.get(ci, func() (*[]byte, []byte, error) {
			cp := s.getComp(record)
			defer s.compPool.Put(cp)
			if err := s.readRecord(ctx, id, ci, (*cp)[:ci.Stored]); err != nil {
				return nil, nil, err
			}
			return s.decodeFrame(id, ci, (*cp)[:ci.Stored])
		})
		if err != nil {
			return nil, nil, s.condemn(id, ci, err)
		}
		defer release()
		bp, data, err := s.sliceChunk(id, ci, frame)
		return bp, data, s.condemn(id, ci, err)
	}
	cp := s.getComp(record)
	defer s.compPool.Put(cp)
	if err := s.readRecord(ctx, id, ci, (*cp)[:ci.Stored]); err != nil {
		return nil, nil, s.condemn(id, ci, err)
	}
	bp, data, err := s.decodeRecord(id, ci, (*cp)[:ci.Stored])
	return bp, data, s.condemn(id, ci, err)
}

// readRecord reads the record ci names into buf (of ci.Stored bytes).
func (s *Store) readRecord(ctx context.Context, id chunkid.ID, ci index.ChunkInfo, buf []byte) error {
	n, err := pack.ReadRange(ctx, s.store, ci.Pack, ci.Off, buf)
	if errors.Is(err, pack.ErrShort) {
		return fmt.Errorf("%w: chunk %s: pack %s ends %d bytes into the record of %d", cerr.ErrDataLoss, id, ci.Pack, n, ci.Stored)
	}
	if err != nil {
		return fmt.Errorf("chunk %s: %w", id, err)
	}
	return nil
}

// FrameStats returns how many frames reads decoded since the store opened,
// and their uncompressed bytes.
func (s *Store) FrameStats() (frames, bytes int64) { return s.frames.Load(), s.frameBytes.Load() }

// Quarantines counts the chunks this store quarantined since it opened.
func (s *Store) Quarantines() int64 { return s.quarantines.Load() }

// condemn quarantines chunk id (index.DB.Quarantine) if err says that its
// copy at ci is bad (ErrDataLoss: it fails verification, or its pack is
// short or gone), in the same step that found it: from then on the index
// asks pushes for the chunk, and the first that has it heals it. Other
// errors (an unavailable backend, a cancelled read) condemn nothing. It
// returns err, saying what was done.
func (s *Store) condemn(id chunkid.ID, ci index.ChunkInfo, err error) error {
	if err == nil || !errors.Is(err, cerr.ErrDataLoss) {
		return err
	}
	did, qerr := s.idx.Quarantine(id, ci)
	if qerr != nil {
		s.log.Warn("cache: could not quarantine a bad chunk", "chunk", id.String(), "err", qerr)
		return err
	}
	if did {
		s.quarantines.Add(1)
		s.log.Warn("cache: chunk quarantined: its stored copy is bad; the next push that has it stores a good one",
			"chunk", id.String(), "pack", ci.Pack.String(), "err", err)
		if s.hooks.Quarantined != nil {
			s.hooks.Quarantined(id)
		}
	}
	return fmt.Errorf("%w (quarantined: pushing any layer that holds the chunk heals it)", err)
}

// CheckRecord decodes and verifies rec, chunk id's record as read from
// where ci says, and quarantines the chunk if it is bad (see condemn).
// The scrub reads whole packs and checks their records with it.
func (s *Store) CheckRecord(id chunkid.ID, ci index.ChunkInfo, rec []byte) error {
	bp, _, err := s.decodeRecord(id, ci, rec)
	if err == nil {
		s.dataPool.Put(bp)
	}
	return s.condemn(id, ci, err)
}

// Condemn quarantines chunk id, whose copy at ci is bad for the reason
// err (wrapping ErrDataLoss), as a read that found it would.
func (s *Store) Condemn(id chunkid.ID, ci index.ChunkInfo, err error) error {
	return s.condemn(id, ci, err)
}

// decodeRecord checks a record's header, decompresses chunk id out of it
// into a pooled buffer and verifies its hash. Anything wrong is
// ErrDataLoss. A chunk in a frame costs a decode of the whole frame:
// readers of several chunks of one frame use decodeFrame once instead.
func (s *Store) decodeRecord(id chunkid.ID, ci index.ChunkInfo, rec []byte) (*[]byte, []byte, error) {
	if ci.Frame != 0 {
		fp, frame, err := s.decodeFrame(id, ci, rec)
		if err != nil {
			return nil, nil, err
		}
		defer s.framePool.Put(fp)
		return s.sliceChunk(id, ci, frame)
	}
	hdrSize, frame, payload, err := pack.ParseHeader(rec)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: chunk %s: %w", cerr.ErrDataLoss, id, err)
	}
	if hdrSize != ci.Size || frame {
		return nil, nil, fmt.Errorf("%w: chunk %s: header says %d bytes (frame %v), index %d alone", cerr.ErrDataLoss, id, hdrSize, frame, ci.Size)
	}
	bp := s.GetData(int(hdrSize))
	// The capacity bounds what DecodeAll may write (WithDecodeAllCapLimit):
	// a frame that decodes to more than the header says fails below.
	data, err := s.dec.DecodeAll(payload, (*bp)[:0:hdrSize+decodeSlack])
	if errors.Is(err, zstd.ErrDecoderClosed) {
		s.dataPool.Put(bp)
		return nil, nil, cerr.ErrClosed
	}
	if err != nil || int64(len(data)) != hdrSize {
		s.dataPool.Put(bp)
		return nil, nil, fmt.Errorf("%w: chunk %s: decompress: got %d bytes of %d: %v", cerr.ErrDataLoss, id, len(data), hdrSize, err)
	}
	if chunkid.Sum(data) != id {
		s.dataPool.Put(bp)
		return nil, nil, fmt.Errorf("%w: chunk %s fails verification", cerr.ErrDataLoss, id)
	}
	return bp, data, nil
}

// SetBackend replaces the backend the store reads and writes, and returns
// the old one. It is for tests that inject faults into a running cache.
func (s *Store) SetBackend(b backend.Store) backend.Store {
	old := s.store
	s.store = b
	return old
}
