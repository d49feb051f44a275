package source

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/procmig/migrate/core/kernel"
	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/internal/testutil/workload"
	"github.com/procmig/migrate/pagestream"
	"github.com/procmig/migrate/source/track"
)

// BenchmarkSendDirty measures what a final round costs on the source for
// scattered dirty pages: the dirty pages of a 256 MiB region (4096 random
// ones, as a 50 MB/s writer leaves over 300 ms) read from a real process
// and written as a page stream to a reader that throws it away.
func BenchmarkSendDirty(b *testing.B) {
	const pages = 256 << 20 / workload.Page
	const written = 4096
	w := workload.Start(b)
	a := w.Map("map", "A", pages, 0)
	w.Call("populate A")
	vmas := workload.Layout(b, w.PID)
	d := &dumper{session: &session{}, pid: w.PID}
	pr, pw := io.Pipe()
	go io.Copy(io.Discard, pr)
	defer pw.Close()
	s, err := d.newSink(pagestream.CodecS2, pw, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer s.abort()
	tr, err := track.New(TrackerUffdWP, w.PID)
	if errors.Is(err, kernel.ErrNotSupported) {
		testutil.Unavailable(b, "uffd-wp tracker: %v", err)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	tracer := ptrace.NewTracer()
	p, err := tracer.Seize(w.PID)
	if err != nil {
		tracer.Close()
		b.Fatal(err)
	}
	err = tr.Start(p, vmas)
	derr := p.Detach()
	tracer.Close()
	if err := errors.Join(err, derr); err != nil {
		b.Fatal(err)
	}
	var sent time.Duration
	round := uint32(0)
	for b.Loop() {
		b.StopTimer()
		w.Call("writen A %d %d", written, round)
		rs, err := tr.Dirty(vmas)
		if err != nil {
			b.Fatal(err)
		}
		if n := pagesIn(rs, a); n < written {
			b.Fatalf("%d pages dirty, want %d", n, written)
		}
		b.StartTimer()
		t0 := time.Now()
		if _, err := s.sendDirty(context.Background(), round, vmas, rs); err != nil {
			b.Fatal(err)
		}
		if err := s.endRound(round); err != nil {
			b.Fatal(err)
		}
		if err := s.w.Flush(); err != nil {
			b.Fatal(err)
		}
		sent += time.Since(t0)
		round++
	}
	b.ReportMetric(float64(sent.Microseconds())/1000/float64(round), "ms/round")
	b.ReportMetric(float64(sent.Nanoseconds())/float64(round)/written/1000, "µs/page")
}

// pagesIn counts the pages of rs in r.
func pagesIn(rs []PageRange, r workload.Region) int {
	n := 0
	for _, x := range rs {
		if s, e := max(x.Start, r.Start), min(x.End, r.End()); s < e {
			n += int((e - s) / workload.Page)
		}
	}
	return n
}
