package pagestream

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"time"
)

// MultiWriter spreads one sequence of rounds over several page streams,
// each a Writer with compressors of its own over an underlying writer of
// its own (several network streams, read and written into the process by
// as many goroutines on the other side). Each call of WritePages or
// WriteRuns goes whole to one stream, in turn; Barrier, Flush and Close go
// to every stream. The rounds' order holds across the streams only if the
// reader of them waits, before it applies a page of round k+1, for every
// stream's barrier of round k (a page sent in two rounds may go in two
// streams): the barriers are there for that.
//
// Concurrency and ownership are those of Writer.
type MultiWriter struct {
	ws   []*Writer
	next int
}

// NewMultiWriter makes a Writer on each of ws with opts; opts.Workers (0:
// GOMAXPROCS) is shared out among them, at least one each. A StreamID set
// in opts is used by the first stream and counted up for the others.
func NewMultiWriter(ws []io.Writer, opts WriterOptions) (*MultiWriter, error) {
	if len(ws) == 0 {
		return nil, errors.New("pagestream: a MultiWriter of no streams")
	}
	workers := opts.Workers
	if workers == 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	m := &MultiWriter{}
	for i, w := range ws {
		o := opts
		o.Workers = max(1, workers/len(ws))
		if i < workers%len(ws) {
			o.Workers++
		}
		if o.StreamID != 0 {
			o.StreamID += uint64(i)
		}
		pw, err := NewWriter(w, o)
		if err != nil {
			m.Abort()
			return nil, err
		}
		m.ws = append(m.ws, pw)
	}
	return m, nil
}

// Streams says how many page streams m writes.
func (m *MultiWriter) Streams() int { return len(m.ws) }

// WritePages is Writer.WritePages on the next stream.
func (m *MultiWriter) WritePages(round uint32, addr uint64, data []byte) error {
	if len(data) == 0 || len(data)%PageSize != 0 {
		return fmt.Errorf("pagestream: WritePages: %d bytes is not a positive multiple of the page size", len(data))
	}
	return m.WriteRuns(round, []Run{{Addr: addr, Pages: len(data) / PageSize}}, data)
}

// WriteRuns is Writer.WriteRuns on the next stream.
func (m *MultiWriter) WriteRuns(round uint32, runs []Run, data []byte) error {
	w := m.ws[m.next]
	if err := w.WriteRuns(round, runs, data); err != nil {
		return err
	}
	m.next = (m.next + 1) % len(m.ws)
	return nil
}

// Barrier queues the barrier of round on every stream.
func (m *MultiWriter) Barrier(round uint32) error {
	for _, w := range m.ws {
		if err := w.Barrier(round); err != nil {
			return err
		}
	}
	return nil
}

// Flush is Writer.Flush on every stream.
func (m *MultiWriter) Flush() error {
	for _, w := range m.ws {
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// Close closes every stream and returns the first error.
func (m *MultiWriter) Close() error {
	var first error
	for _, w := range m.ws {
		if err := w.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Abort aborts every stream.
func (m *MultiWriter) Abort() {
	for _, w := range m.ws {
		w.Abort()
	}
}

// Stats sums the streams' Stats.
func (m *MultiWriter) Stats() Stats {
	var s Stats
	for _, w := range m.ws {
		s.Add(w.Stats())
	}
	return s
}

// Times is the streams' Times: compress summed over them (as over one
// Writer's workers), write that of the stream that spent the longest
// writing (they write in parallel).
func (m *MultiWriter) Times() (compress, write time.Duration) {
	for _, w := range m.ws {
		c, wr := w.Times()
		compress += c
		write = max(write, wr)
	}
	return compress, write
}
