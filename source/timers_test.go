package source

import (
	"testing"

	"github.com/procmig/migrate/core"
)

func TestParseTimers(t *testing.T) {
	in := "ID: 1\nsignal: 14/0000000000000000\nnotify: signal/pid.29971\nClockID: 0\n" +
		"ID: 0\nsignal: 12/0000000000001234\nnotify: thread/tid.29972\nClockID: 1\n" +
		"ID: 7\nsignal: 0/0000000000000000\nnotify: none/pid.29971\nClockID: 7\n"
	got, err := parseTimers([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []core.PosixTimer{
		{ID: 1, Signo: 14, Notify: sigevSignal, Clock: 0},
		{ID: 0, Signo: 12, Value: 0x1234, Notify: sigevThreadID, TID: 29972, Clock: 1},
		{ID: 7, Notify: sigevNone, Clock: 7},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d timers, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("timer %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"signal: 1/0\n", "ID: x\n", "ID: 1\nnotify: bogus/pid.1\n", "ID: 1\nsignal: 999/0\n", "garbage\n"} {
		if _, err := parseTimers([]byte(bad)); err == nil {
			t.Errorf("parseTimers(%q) succeeded", bad)
		}
	}
}

func FuzzParseTimers(f *testing.F) {
	f.Add([]byte("ID: 1\nsignal: 14/0000000000000000\nnotify: signal/pid.29971\nClockID: 0\n"))
	f.Add([]byte("ID: 0\nsignal: 12/1234\nnotify: thread/tid.5\nClockID: 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		timers, err := parseTimers(data)
		if err != nil {
			return
		}
		for _, tm := range timers {
			if tm.ID < 0 || tm.TID < 0 || tm.Signo < 0 || tm.Signo > 255 {
				t.Fatalf("out of range: %+v", tm)
			}
		}
	})
}
