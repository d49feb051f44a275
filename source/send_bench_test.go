package source

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/procmig/migrate/internal/testutil/workload"
	"github.com/procmig/migrate/pagestream"
)

// BenchmarkSendDirty measures what a final round costs on the source for
// scattered dirty pages: the dirty pages of a 256 MiB region (4096 random
// ones, as a 50 MB/s writer leaves over 300 ms) read from a real process
// and written as a page stream to a reader that throws it away.
func BenchmarkSendDirty(b *testing.B) {
	const pages = 256 << 20 / pg
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
	tr := newTestTracker(b, TrackerUffdWP, w)
	startTracking(b, tr, w)
	var sent time.Duration
	round := uint32(0)
	for b.Loop() {
		b.StopTimer()
		w.Call("writen A %d %d", written, round)
		rs, err := tr.Dirty(vmas)
		if err != nil {
			b.Fatal(err)
		}
		if n := len(pagesIn(rs, a.Start, pages)); n < written {
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
