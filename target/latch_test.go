package target

import (
	"testing"
	"time"
)

// TestLatch: a latch's wait returns true once it opens, whether it opened
// before, during the look or after the waiter fell asleep; false once
// abort opens; a latch opens once.
func TestLatch(t *testing.T) {
	for _, after := range []time.Duration{0, latchSpin / 4, 3 * latchSpin} {
		l, abort := newLatch(), newLatch()
		go func() {
			time.Sleep(after)
			l.open()
			l.open() // a second time does nothing
		}()
		if !l.wait(abort) {
			t.Fatalf("opened after %v: wait returned false", after)
		}
	}
	for _, after := range []time.Duration{0, 3 * latchSpin} {
		l, abort := newLatch(), newLatch()
		go func() {
			time.Sleep(after)
			abort.open()
		}()
		if l.wait(abort) {
			t.Fatalf("aborted after %v: wait returned true", after)
		}
	}
}
