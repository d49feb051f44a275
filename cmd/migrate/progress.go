package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate"
)

// statusWriter is stderr with a status line: the line a round's progress
// redraws in place on a terminal. Whatever else is written (a log record,
// a round's line) first clears the status line, so the two never mix; the
// next status redraws it.
type statusWriter struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	drawn bool
}

// newStatusWriter wraps w; it draws status lines only if w is a terminal
// that is not TERM=dumb.
func newStatusWriter(w io.Writer) *statusWriter {
	return &statusWriter{w: w, tty: isTerminal(w) && os.Getenv("TERM") != "dumb"}
}

// isTerminal says whether w is a file open on a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (s *statusWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clearLocked()
	return s.w.Write(p)
}

// status draws line in place of the last one; nothing unless on a terminal.
func (s *statusWriter) status(line string) {
	if !s.tty {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, "\r\x1b[K%s", line)
	s.drawn = true
}

// clear erases the status line, if one is drawn.
func (s *statusWriter) clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clearLocked()
}

func (s *statusWriter) clearLocked() {
	if s.drawn {
		io.WriteString(s.w, "\r\x1b[K")
		s.drawn = false
	}
}

// transferStatus returns the function that draws a round's progress on
// e's stderr, or nil when stderr is not a terminal (the line per round is
// all a log or a pipe gets).
// The line begins with what, followed by the round's number if rounds.
func (e *env) transferStatus(what string, rounds bool) func(migrate.Transfer) {
	sw, ok := e.stderr.(*statusWriter)
	if !ok || !sw.tty {
		return nil
	}
	return func(t migrate.Transfer) {
		label := what
		if rounds {
			label = fmt.Sprintf("%s %d", what, t.Round)
		}
		sw.status(formatTransfer(label, t))
	}
}

// clearStatus erases a drawn progress line (before a final report).
func (e *env) clearStatus() {
	if sw, ok := e.stderr.(*statusWriter); ok {
		sw.clear()
	}
}

// barWidth is the width of the progress bar, in characters.
const barWidth = 24

// formatTransfer is a round's progress line: "round 0: 412 MiB of 1.0 GiB
// [#########...............]  40%  430 MB/s  ETA 1.4 s". Without a
// planned size, or once the round has sent more than planned (pages
// written while it ran), the line has no bar and no ETA.
func formatTransfer(label string, t migrate.Transfer) string {
	const page = 4096
	sent := t.Pages * page
	rate := 0.0
	if t.Elapsed > 0 {
		rate = float64(sent) / t.Elapsed.Seconds()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", label, humanBytes(sent))
	if t.Planned > 0 && t.Pages <= t.Planned {
		frac := float64(t.Pages) / float64(t.Planned)
		fill := int(frac*barWidth + 0.5)
		fmt.Fprintf(&b, " of %s [%s%s] %3.0f%%", humanBytes(t.Planned*page),
			strings.Repeat("#", fill), strings.Repeat(".", barWidth-fill), frac*100)
		fmt.Fprintf(&b, "  %.0f MB/s", rate/1e6)
		if rate > 0 {
			eta := time.Duration(float64((t.Planned-t.Pages)*page) / rate * float64(time.Second))
			fmt.Fprintf(&b, "  ETA %s", formatMS(float64(eta)/float64(time.Millisecond)))
		}
		return b.String()
	}
	fmt.Fprintf(&b, "  %.0f MB/s", rate/1e6)
	return b.String()
}

// stagesLine is the page pipeline's stages on one line: "pages: read 75 ms
// (1000 MB/s), compress 152 ms (499 MB/s), wire 211 ms (359 MB/s), apply
// 87 ms (868 MB/s)".
func stagesLine(stages []migrate.StageReport) string {
	parts := make([]string, len(stages))
	for i, s := range stages {
		parts[i] = fmt.Sprintf("%s %s (%.0f MB/s)", s.Stage, formatMS(s.BusyMS), s.MBPerS)
	}
	return "pages: " + strings.Join(parts, ", ")
}
