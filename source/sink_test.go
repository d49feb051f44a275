package source

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/procmig/migrate/internal/testutil/workload"
	"github.com/procmig/migrate/pagestream"
)

// TestSinkAreaGone: runs of pages queued for one process_vm_readv, one of
// them in an area unmapped before the read (the process runs during
// pre-copy): while the process runs the gone run is skipped and the others
// are sent; with the process frozen it is an error naming the area.
func TestSinkAreaGone(t *testing.T) {
	for _, racy := range []bool{true, false} {
		w := workload.Start(t)
		a := w.Map("map", "A", 8, 0)
		w.Call("populate A")
		b := w.Map("map", "B", 8, 0)
		w.Call("populate B")
		d := &dumper{session: &session{}, pid: w.PID}
		var out bytes.Buffer
		s, err := d.newSink(pagestream.CodecS2, &out, "test")
		if err != nil {
			t.Fatal(err)
		}
		s.racy = racy
		ctx := context.Background()
		for _, r := range []workload.Region{a, b} {
			if err := s.queue(ctx, 0, r.Start, r.Start+2*workload.Page); err != nil {
				t.Fatal(err)
			}
		}
		w.Call("unmap B")
		err = s.drain(ctx)
		switch {
		case racy && err != nil:
			t.Fatalf("racy: %v", err)
		case racy:
			if s.pages != 2 || s.skipped != 2 || !s.sent.Has(a.Start) || s.sent.Has(b.Start) {
				t.Errorf("racy: %d pages sent, %d skipped, A sent %v, B sent %v; want 2, 2, true, false", s.pages, s.skipped, s.sent.Has(a.Start), s.sent.Has(b.Start))
			}
			if _, err := s.finish(); err != nil {
				t.Fatal(err)
			}
			rd, err := pagestream.NewReader(&out, pagestream.ReaderOptions{})
			if err != nil {
				t.Fatal(err)
			}
			fr, err := rd.Next()
			if err != nil || fr.Addr != a.Start || fr.Pages != 2 {
				t.Errorf("the stream's first frame: %+v, %v; want A's 2 pages", fr, err)
			}
			rd.Close()
		case err == nil:
			t.Fatal("frozen: reading an unmapped area did not fail")
		case !strings.Contains(err.Error(), "bad address"):
			t.Errorf("frozen: %v, want it to say bad address", err)
		default:
			s.abort()
		}
	}
}
