// Package ptrace owns the tracer thread and everything done through ptrace:
// seizing and freezing the threads of a process, reading and writing their
// registers and extended state, injecting system calls, and detaching.
//
// Every ptrace and wait4 call for a tracee must come from the OS thread that
// attached to it, so a Tracer runs all of them on one goroutine locked to its
// thread, fed closures through a channel (Delve does the same). Callers use
// Tracer.Do, or the methods that wrap it.
package ptrace
