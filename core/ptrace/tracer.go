package ptrace

import (
	"errors"
	"runtime"
)

// ErrClosed is returned by a Tracer that has been closed.
var ErrClosed = errors.New("ptrace: tracer closed")

// Tracer runs closures on one locked OS thread. All tracees attached through
// a Tracer must be handled through it until they are detached.
type Tracer struct {
	reqs chan func()
	done chan struct{}
}

// NewTracer starts the tracer thread.
func NewTracer() *Tracer {
	t := &Tracer{reqs: make(chan func()), done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		// Never unlocked: if a tracee outlives a mistake, the thread and its
		// ptrace links die with this goroutine instead of being reused.
		runtime.LockOSThread()
		close(ready)
		for {
			select {
			case f := <-t.reqs:
				f()
			case <-t.done:
				return
			}
		}
	}()
	<-ready
	return t
}

// Do runs f on the tracer thread and returns its error.
func (t *Tracer) Do(f func() error) error {
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
