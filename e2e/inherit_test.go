package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/transport"
)

// tickReader reads "tick N" lines from r and keeps the last N.
type tickReader struct {
	last atomic.Int64
	done chan struct{}
}

func readTicks(r *os.File) *tickReader {
	tr := &tickReader{done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var n int64
			if _, err := fmt.Sscanf(sc.Text(), "tick %d", &n); err == nil {
				tr.last.Store(n)
			}
		}
	}()
	return tr
}

// startPipedCounter starts a counter whose stdout is a pipe the test
// reads, and returns it, the reader of its ticks and the pipe's ID
// ("pipe:[N]").
func startPipedCounter(t *testing.T) (*testutil.Proc, *tickReader, string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	p := testutil.StartWith(t, testutil.Options{Stdout: w}, testutil.Build(t, "counter"))
	w.Close()
	ticks := readTicks(r)
	testutil.WaitFor(t, short, "the counter to count", func() bool { return ticks.last.Load() >= 3 })
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/1", p.PID), &st); err != nil {
		t.Fatal(err)
	}
	return p, ticks, fmt.Sprintf("pipe:[%d]", st.Ino)
}

// openFIFO makes a FIFO and opens it for reading, without waiting for a
// writer.
func openFIFO(t *testing.T) (string, *os.File) {
	t.Helper()
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fr, err := os.OpenFile(fifo, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fr.Close() })
	return fifo, fr
}

// waitFIFOTicks waits until more than n ticks came through the FIFO fr.
func waitFIFOTicks(t *testing.T, fr *os.File, n int) {
	t.Helper()
	var buf bytes.Buffer
	testutil.WaitFor(t, short, "ticks through the FIFO", func() bool {
		b := make([]byte, 4096)
		k, _ := fr.Read(b)
		buf.Write(b[:max(k, 0)])
		return strings.Count(buf.String(), "tick ") > n
	})
}

// TestInheritFD (issue 13): a counter writes its lines into a pipe the
// test reads. Its dump is refused, naming the pipe as pipe:[N] and saying
// how to supply it; with --external pipe:[N] it is dumped. A restore
// without --inherit-fd, or with one naming an object the image lacks, is
// refused before anything is built. `migrate restore --inherit-fd
// pipe:[N]=fd:3`, fd 3 a new pipe the test reads, gives the process that
// pipe: its ticks go on arriving there, from where they stopped; and
// --inherit-fd pipe:[N]=PATH, a FIFO the test reads, gives it the FIFO.
func TestInheritFD(t *testing.T) {
	testutil.RequireRoot(t)
	bin := buildMigrate(t)
	p, orig, id := startPipedCounter(t)

	// Without --external: refused, before the freeze, naming the pipe
	// and how to supply it.
	dir := t.TempDir()
	_, err := migrate.Dump(context.Background(), p.PID, dir, migrate.DumpOptions{Logger: testLogger(t)})
	var ue *source.UnsupportedFDError
	if !errors.As(err, &ue) || ue.Kind != id || ue.FD != 1 || !strings.Contains(ue.Reason, "--inherit-fd '"+id+"=fd:N'") {
		t.Fatalf("dump: %v, want a refusal of fd 1 (%s) saying how to supply it", err, id)
	}
	testutil.RequireRunning(t, p.PID)

	// With it: dumped (and killed).
	if _, err := migrate.Dump(context.Background(), p.PID, dir, migrate.DumpOptions{Logger: testLogger(t), External: []string{id}, Force: true}); err != nil {
		t.Fatalf("dump --external %s: %v", id, err)
	}
	p.WaitExit(t, short)
	<-orig.done
	stopped := orig.last.Load()

	restore := func(t *testing.T, extra []*os.File, args ...string) (int, string, error) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"restore", "--check", "--dir", dir}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr, cmd.ExtraFiles = &stdout, &stderr, extra
		err := cmd.Run()
		pid, _ := strconv.Atoi(strings.TrimSpace(stdout.String()))
		return pid, stderr.String(), err
	}
	for _, tc := range []struct{ name, arg string }{
		{"missing", ""},
		{"unknown object", "pipe:[1]=/dev/null"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			if tc.arg != "" {
				args = []string{"--inherit-fd", tc.arg}
			}
			_, msg, err := restore(t, nil, args...)
			if exitCode(err) != 1 || !strings.Contains(msg, "--inherit-fd") {
				t.Errorf("restore %v: %v: %s; want a refusal naming --inherit-fd", args, err, msg)
			}
			t.Logf("refused: %s", strings.TrimSpace(msg))
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.PID)); err == nil {
				t.Errorf("a process %d was left by the refused restore", p.PID)
			}
		})
	}

	t.Run("fd", func(t *testing.T) {
		r2, w2, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r2.Close()
		pid, msg, err := restore(t, []*os.File{w2}, "--inherit-fd", id+"=fd:3")
		w2.Close()
		if err != nil {
			t.Fatalf("restore --inherit-fd %s=fd:3: %v: %s", id, err, msg)
		}
		q := testutil.Adopt(t, pid, "")
		got := readTicks(r2)
		testutil.WaitFor(t, short, "ticks through the new pipe", func() bool { return got.last.Load() > stopped+3 })
		q.Stop(t)
		<-got.done
	})

	t.Run("path", func(t *testing.T) {
		fifo, fr := openFIFO(t)
		pid, msg, err := restore(t, nil, "--inherit-fd", id+"="+fifo)
		if err != nil {
			t.Fatalf("restore --inherit-fd %s=%s: %v: %s", id, fifo, err, msg)
		}
		q := testutil.Adopt(t, pid, "")
		waitFIFOTicks(t, fr, 3)
		q.Stop(t)
	})
}

// TestLiveInheritFD: a counter writing into a pipe the test reads moves
// live with MigrateOptions.Inherit giving, on the target, a FIFO in place
// of the pipe: its ticks go on through the FIFO. An object no process of
// the migration holds is refused before anything starts.
func TestLiveInheritFD(t *testing.T) {
	testutil.RequireRoot(t)
	s := startServeWith(t, serveOptions{})
	p, orig, id := startPipedCounter(t)
	fifo, fr := openFIFO(t)

	var rounds int
	_, err := source.Migrate(context.Background(), source.MigrateOptions{PID: p.PID, To: s.Addr, Transport: transport.Config{Insecure: true},
		Logger: testLogger(t), Inherit: map[string]string{"pipe:[1]": fifo}, Progress: func(source.RoundReport) { rounds++ }})
	var ie *source.InheritError
	if !errors.As(err, &ie) || rounds != 0 {
		t.Fatalf("migration with an object no process holds: %v after %d rounds, want a *source.InheritError before any", err, rounds)
	}
	testutil.RequireRunning(t, p.PID)

	r, _ := migrateLive(t, p, s, source.MigrateOptions{Inherit: map[string]string{id: fifo}})
	<-orig.done
	waitFIFOTicks(t, fr, 3)
	stopMigrated(t, r)
}
