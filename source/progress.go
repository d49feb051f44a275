package source

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/procmig/migrate/core/proc"
)

// Transfer is how far a round of pages has gone, while it runs
// (DumpOptions.Transfer, MigrateOptions.Transfer): a round of a 64 GiB
// process takes minutes, and a person watching should see it move.
type Transfer struct {
	Round int
	// Pages are the pages sent so far in the round (all the tree's).
	Pages uint64
	// Planned is what the round is expected to send: the dirty pages the
	// tracker reported, or for the first round the anonymous and shared
	// memory resident in the tree (an estimate: pages may come and go
	// while the round runs, so Pages may pass it). Zero if unknown.
	Planned uint64
	// Elapsed is the time since the round began.
	Elapsed time.Duration
}

// transferEvery is how often a round's Transfer is reported.
var transferEvery = 250 * time.Millisecond // a variable for tests

// transferWatch reports a round's Transfer every transferEvery until it is
// stopped. The sinks count their pages themselves (pageSink.written);
// the watch reads the counts from its own goroutine, so the senders never
// wait for the report.
type transferWatch struct {
	planned atomic.Uint64
	stop    chan struct{}
	once    sync.Once
	done    sync.WaitGroup
}

// watchTransfer starts reporting round's progress over the sinks of all to
// f, or returns nil when f is nil. Its stop must be called.
func watchTransfer(f func(Transfer), round int, all []*dumper, planned uint64) *transferWatch {
	if f == nil {
		return nil
	}
	w := &transferWatch{stop: make(chan struct{})}
	w.planned.Store(planned)
	sinks := make([]*pageSink, 0, len(all))
	base := make([]uint64, 0, len(all))
	for _, d := range all {
		if d.sink != nil {
			sinks = append(sinks, d.sink)
			base = append(base, d.sink.written.Load())
		}
	}
	start := time.Now()
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		t := time.NewTicker(transferEvery)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
			var sent uint64
			for i, s := range sinks {
				sent += s.written.Load() - base[i]
			}
			f(Transfer{Round: round, Pages: sent, Planned: w.planned.Load(), Elapsed: time.Since(start)})
		}
	}()
	return w
}

// end stops the reports; none is made after it returns. It may be called
// more than once.
func (w *transferWatch) end() {
	if w == nil {
		return
	}
	w.once.Do(func() { close(w.stop) })
	w.done.Wait()
}

// residentPages estimates the pages a first round sends for the processes
// of all: their resident anonymous and shared memory (RssAnon and
// RssShmem of /proc/PID/status). Shared memory counted in each process
// that maps it is counted once for each; a process whose status cannot be
// read counts nothing.
func residentPages(all []*dumper) uint64 {
	var bytes uint64
	for _, d := range all {
		if st, err := proc.ReadStatus(d.pid); err == nil {
			bytes += st.RssAnon + st.RssShmem
		}
	}
	return bytes / pageSize
}

// StageReport is one stage of the page pipeline (MigrateReport.Stages,
// DumpReport.Stages): how long it worked, and the page bytes it moved a
// second of that. The stages run at once (reading pages feeds the
// compression workers, which feed the writes to the link or the file),
// so the one whose busy time is nearest the pages' whole time is the
// bottleneck; compress sums its workers' time, so it may pass the wall
// clock with more than one.
type StageReport struct {
	// Stage: "read" (pagemap and process_vm_readv from the processes),
	// "compress", "wire" (writes to the page streams: the link, with its
	// flow control, or the image file), "apply" (the target writing pages
	// into the processes, as it measured it, live migration only).
	Stage  string  `json:"stage"`
	BusyMS float64 `json:"busy_ms"`
	// MBPerS is the raw page bytes over the busy time, in 10^6 bytes a
	// second (0 if the stage took no measurable time).
	MBPerS float64 `json:"mb_per_s"`
}

// stages reports the pipeline of the sinks of all, which sent raw bytes
// of pages; apply, if positive, is the target's time writing them.
func stages(all []*dumper, raw uint64, apply time.Duration) []StageReport {
	var read, compress, write time.Duration
	for _, d := range all {
		if d.sink == nil {
			continue
		}
		read += d.sink.readTime
		c, w := d.sink.w.Times()
		compress += c
		write += w
	}
	out := []StageReport{stage("read", read, raw), stage("compress", compress, raw), stage("wire", write, raw)}
	if apply > 0 {
		out = append(out, stage("apply", apply, raw))
	}
	return out
}

func stage(name string, busy time.Duration, raw uint64) StageReport {
	s := StageReport{Stage: name, BusyMS: ms(busy)}
	if busy > 0 {
		s.MBPerS = float64(raw) / busy.Seconds() / 1e6
	}
	return s
}
