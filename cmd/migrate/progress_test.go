package main

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/procmig/migrate"
)

func TestFormatTransfer(t *testing.T) {
	const gib = 1 << 30 / 4096 // pages
	for _, c := range []struct {
		t    migrate.Transfer
		want string
	}{
		{migrate.Transfer{Round: 0, Pages: gib / 4, Planned: gib, Elapsed: time.Second},
			"round 0: 256 MiB of 1.0 GiB [######..................]  25%  268 MB/s  ETA 3.00 s"},
		{migrate.Transfer{Round: 2, Pages: 0, Planned: 100, Elapsed: 0},
			"round 2: 0 B of 400 KiB [........................]   0%  0 MB/s"},
		{migrate.Transfer{Round: 1, Pages: 200, Planned: 100, Elapsed: time.Second},
			"round 1: 800 KiB  1 MB/s"},
		{migrate.Transfer{Round: 3, Pages: 256, Elapsed: time.Second},
			"round 3: 1.0 MiB  1 MB/s"},
		{migrate.Transfer{Round: 0, Pages: gib, Planned: gib, Elapsed: 2 * time.Second},
			"round 0: 1.0 GiB of 1.0 GiB [########################] 100%  537 MB/s  ETA 0.0 ms"},
	} {
		if got := formatTransfer(fmt.Sprintf("round %d", c.t.Round), c.t); got != c.want {
			t.Errorf("formatTransfer(%+v)\n got %q\nwant %q", c.t, got, c.want)
		}
	}
}

// TestStatusWriter: a status line is drawn in place on a terminal and
// cleared before anything else is written; off a terminal nothing of it
// is written.
func TestStatusWriter(t *testing.T) {
	var buf bytes.Buffer
	sw := &statusWriter{w: &buf, tty: true}
	sw.status("round 0: 1")
	sw.status("round 0: 2")
	fmt.Fprintln(sw, "round 0 (pre-copy): done")
	sw.clear() // nothing drawn: nothing written
	sw.status("round 1: 1")
	sw.clear()
	want := "\r\x1b[Kround 0: 1\r\x1b[Kround 0: 2\r\x1b[Kround 0 (pre-copy): done\n\r\x1b[Kround 1: 1\r\x1b[K"
	if got := buf.String(); got != want {
		t.Errorf("terminal got %q\nwant %q", got, want)
	}

	buf.Reset()
	sw = newStatusWriter(&buf) // a buffer is no terminal
	sw.status("round 0: 1")
	fmt.Fprintln(sw, "line")
	sw.clear()
	if got := buf.String(); got != "line\n" {
		t.Errorf("off a terminal got %q, want only the line", got)
	}
	e := newEnv(&buf, sw)
	if e.transferStatus("round", true) != nil {
		t.Error("transferStatus draws off a terminal")
	}
}

func TestStagesLine(t *testing.T) {
	got := stagesLine([]migrate.StageReport{{Stage: "read", BusyMS: 75.6, MBPerS: 1000.3}, {Stage: "wire", BusyMS: 1210, MBPerS: 59.2}})
	if want := "pages: read 76 ms (1000 MB/s), wire 1.21 s (59 MB/s)"; got != want {
		t.Errorf("stagesLine: %q, want %q", got, want)
	}
}
