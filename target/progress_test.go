package target

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/testutil"
)

// TestWatchFill: while pages are written, the restore reports how many of
// the tree's were, of those its page streams hold; none after stop.
func TestWatchFill(t *testing.T) {
	old := progressEvery
	progressEvery = time.Millisecond
	t.Cleanup(func() { progressEvery = old })

	ss := &session{}
	ss.filled.Add(7) // pages of an earlier fill are not this one's
	b := &Builder{ss: ss, all: []*restorer{
		{session: ss, pagesInfo: &core.PagesInfo{Pages: 100}},
		{session: ss},
		{session: ss, pagesInfo: &core.PagesInfo{Pages: 50}},
	}}
	type report struct{ pages, planned uint64 }
	var (
		mu      sync.Mutex
		got     []report
		stopped atomic.Bool
		late    atomic.Int32
	)
	stop := b.watchFill(func(pages, planned uint64, _ time.Duration) {
		if stopped.Load() {
			late.Add(1)
		}
		mu.Lock()
		got = append(got, report{pages, planned})
		mu.Unlock()
	})
	seen := func(pages uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0 && got[len(got)-1].pages == pages
	}
	for _, n := range []uint64{0, 40, 150} {
		ss.filled.Store(7 + n)
		testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("a report of %d pages written", n), func() bool { return seen(n) })
	}
	stop()
	stopped.Store(true)
	if n := late.Load(); n > 0 {
		t.Errorf("%d reports after stop", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range got {
		if r.planned != 150 {
			t.Errorf("report %+v: planned %d, want 150 (the tree's pages)", r, r.planned)
		}
	}
	if (&Builder{ss: ss}).watchFill(nil) == nil {
		t.Error("watchFill(nil) returned a nil stop")
	}
}
