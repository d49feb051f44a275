package ptrace

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/osthread"
)

// ErrClosed is returned by a Tracer that has been closed.
var ErrClosed = errors.New("ptrace: tracer closed")

// Tracer runs closures on one locked OS thread. All tracees attached through
// a Tracer must be handled through it until they are detached.
type Tracer struct {
	reqs chan func()
	done chan struct{}
	tid  int // the tracer thread
}

// NewTracer starts the tracer thread.
func NewTracer() *Tracer {
	t := &Tracer{reqs: make(chan func()), done: make(chan struct{})}
	ready := make(chan struct{})
	// A thread of its own: if a tracee outlives a mistake, the thread and
	// its ptrace links die with this goroutine instead of being reused.
	osthread.Go(func() {
		t.tid = unix.Gettid()
		close(ready)
		for {
			select {
			case f := <-t.reqs:
				f()
			case <-t.done:
				return
			}
		}
	})
	<-ready
	return t
}

// Do runs f on the tracer thread and returns its error.
//
// Called from f itself (on the tracer thread: only the tracer goroutine
// runs there, for it is locked to it and never unlocked), it runs its
// closure at once: a caller may wrap a whole sequence of ptrace work in one
// Do, which saves two thread switches per request.
func (t *Tracer) Do(f func() error) error {
	if unix.Gettid() == t.tid {
		return f()
	}
	errc := make(chan error, 1)
	select {
	case t.reqs <- func() { errc <- f() }:
	case <-t.done:
		return ErrClosed
	}
	return <-errc
}

// Close stops the tracer thread. Tracees still attached are detached by the
// kernel when the thread exits.
func (t *Tracer) Close() {
	select {
	case <-t.done:
	default:
		close(t.done)
	}
}

// PinTo binds the tracer thread to one CPU (or, with cpu < 0, lets it run
// anywhere again). On virtual machines a ptrace stop or resume that wakes
// a thread on another CPU costs tens of microseconds; a tracer next to its
// tracee makes each injected system call several times cheaper.
func (t *Tracer) PinTo(cpu int) error {
	return t.Do(func() error {
		var set unix.CPUSet
		if cpu < 0 {
			for i := 0; i < runtime.NumCPU(); i++ {
				set.Set(i)
			}
		} else {
			set.Set(cpu)
		}
		return unix.SchedSetaffinity(0, &set)
	})
}

// LastCPU is the CPU thread tid last ran on (/proc/TID/stat, field 39).
func LastCPU(tid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// Field 39 overall; after the comm, fields start at 3.
	if len(f) < 39-2 {
		return 0, errors.New("short /proc stat")
	}
	return strconv.Atoi(f[39-3])
}
