package pack

import (
	"fmt"
)

// Seal appends the table and footer for entries to records (the records
// the entries describe, back to back from offset 0) and returns the whole
// pack. Before it returns the pack, it reads back what it wrote as a reader
// would: the footer, the table against its checksum, each entry against the
// one it was given, and each record's header against its entry. A pack
// that fails is never uploaded: a bug or a memory fault here would
// otherwise be found only when the chunks are read (restic's pack writer
// checks its header the same way).
func Seal(records []byte, entries []Entry) ([]byte, error) {
	if len(entries) == 0 || len(entries) > MaxChunks {
		return nil, fmt.Errorf("pack: seal: %d entries, want 1 to %d", len(entries), MaxChunks)
	}
	n := len(records)
	body := AppendTable(records, entries)
	size := int64(len(body))
	footer := body[len(body)-FooterSize:]
	_, tableSize, err := ParseFooter(footer, size)
	if err != nil {
		return nil, fmt.Errorf("pack: seal: footer reads back wrong: %w", err)
	}
	table := body[n : n+tableSize]
	got, err := ParseTable(table, footer, size)
	if err != nil {
		return nil, fmt.Errorf("pack: seal: table reads back wrong: %w", err)
	}
	for i, e := range got {
		if e != entries[i] {
			return nil, fmt.Errorf("pack: seal: entry %d reads back as %+v, wrote %+v", i, e, entries[i])
		}
		hs, frame, _, err := ParseHeader(body[e.Off : e.Off+e.Stored])
		want := e.Size
		if e.Frame != 0 {
			want = e.Frame
		}
		if err != nil || hs != want || frame != (e.Frame != 0) {
			return nil, fmt.Errorf("pack: seal: record %d (%s): header says %d bytes (frame %v), entry %+v: %v", i, e.ID, hs, frame, e, err)
		}
	}
	return body, nil
}

// Parse returns the table of a pack read whole.
func Parse(body []byte) ([]Entry, error) {
	if len(body) < FooterSize {
		return nil, fmt.Errorf("%d bytes, too short for a pack", len(body))
	}
	footer := body[len(body)-FooterSize:]
	_, tableSize, err := ParseFooter(footer, int64(len(body)))
	if err != nil {
		return nil, err
	}
	start := len(body) - FooterSize - tableSize
	return ParseTable(body[start:len(body)-FooterSize], footer, int64(len(body)))
}
