// Package osthread runs functions on OS threads of their own that end with
// them: for work that changes what a thread is (its fd table, fs context,
// namespaces, ptrace links, credentials) and must not leave the change on
// a thread that runs other code.
//
// A goroutine that exits while locked to its thread ends the thread: the
// usual way to throw such a thread away. Except on the process's main
// thread, which Go never ends: it parks it, changed, for good. And the
// main thread is the thread-group leader, which the kernel consults for
// the whole process in places: pidfd_getfd and /proc/PID/fd read the
// leader's fd table, /proc/PID/cwd its fs context, a tracee stays attached
// to it. The test binaries run other goroutines on the main thread while
// their main goroutine waits, so a locked goroutine lands there now and
// then: an fd table unshared there made pidfd_getfd from a restored
// process find none of the agent's new files, one restore in four.
package osthread

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// Go runs f on an OS thread locked to it, never the main thread, and ends
// the thread when f returns. It returns at once.
func Go(f func()) {
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			f() // returns locked: the thread ends with this goroutine
			return
		}
		// The main thread. While this goroutine holds it, no other
		// goroutine runs on it: f's goroutine gets another thread.
		done := make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread()
			f()
		}()
		<-done
		runtime.UnlockOSThread()
	}()
}

// Run is Go, waiting for f to return.
func Run(f func()) {
	done := make(chan struct{})
	Go(func() {
		defer close(done)
		f()
	})
	<-done
}

// KeepMain, called from an init function (the main goroutine, on the main
// thread while the program initialises), keeps the main thread to the
// main goroutine for good: no other goroutine ever runs there, so none
// can leave it changed. A program (or a test binary) that calls it is
// safe even from code that locks threads on its own.
func KeepMain() { runtime.LockOSThread() }
