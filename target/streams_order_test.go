package target

import (
	"bytes"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/procmig/migrate/pagestream"
)

// streamBytes is a page stream: for each round of rounds, one page at
// addr filled with the round's number plus one, then the round's barrier;
// rounds that are negative give only the barrier of -round-1.
func streamBytes(t *testing.T, addr uint64, rounds ...int) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := pagestream.NewWriter(&b, pagestream.WriterOptions{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rounds {
		if r >= 0 {
			if err := w.WritePages(uint32(r), addr, bytes.Repeat([]byte{byte(r + 1)}, pageSize)); err != nil {
				t.Fatal(err)
			}
		} else {
			r = -r - 1
		}
		if err := w.Barrier(uint32(r)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestStreamsApplyInRoundOrder: a page sent in round 0 on one stream and
// again in round 1 on another (LiveLayout.Streams > 1) is written in
// round order, whatever order the streams deliver it in: the round-1
// frame waits for every stream's round-0 barrier, else the older
// contents would be the ones that stay.
func TestStreamsApplyInRoundOrder(t *testing.T) {
	const addr = 0x10000
	lt := newLiveTarget(nil, slog.New(slog.DiscardHandler))
	lt.layout, lt.streams = 1, 2
	var mu sync.Mutex
	var order []uint32
	lt.writeFrame = func(pid int, fr *pagestream.Frame) error {
		if pid != testPID || fr.Addr != addr {
			t.Errorf("frame of process %d at %#x, want %d at %#x", pid, fr.Addr, testPID, addr)
		}
		mu.Lock()
		order = append(order, fr.Round)
		mu.Unlock()
		return nil
	}
	slow := &pagesIn{pid: testPID, barrier: -1}
	fast := &pagesIn{pid: testPID, barrier: -1}
	lt.ins = []*pagesIn{slow, fast}
	slowR, slowW := io.Pipe()
	go lt.apply(slow, slowR)
	go lt.apply(fast, io.NopCloser(bytes.NewReader(streamBytes(t, addr, -1, 1))))

	// The fast stream's round-1 page must not be written before the
	// slow one's round 0: give it time to misbehave (a wait that cannot
	// make the test fail when the code is right, only miss a bug).
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(order)
		mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := slowW.Write(streamBytes(t, addr, 0)); err != nil {
		t.Fatal(err)
	}
	slowW.Close()

	lt.mu.Lock()
	for !(slow.ended && fast.ended) && lt.err == nil {
		lt.cond.Wait()
	}
	err := lt.err
	lt.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 2 || order[0] != 0 || order[1] != 1 {
		t.Fatalf("pages written in rounds %v, want [0 1]: the older round's contents would stay", order)
	}
}
