// Package proc reads and parses the files of /proc/PID that a checkpoint
// needs: maps and smaps (memory layout and VmFlags), stat and status
// (process state, ids, credentials, signal masks), fdinfo and the fd links,
// the task list, auxv, cmdline, and pagemap (which pages exist).
//
// Every parser takes the file's bytes, never panics, and on bad input
// returns a *ParseError naming the file, line and field; such errors match
// errors.Is(err, ErrMalformed). The Read functions add the path and wrap
// system errors with %w, so a process that exited shows as
// errors.Is(err, fs.ErrNotExist) or errors.Is(err, unix.ESRCH).
//
// Reading several /proc files of a running process is not atomic: a file
// read with more than one read(2) (a long maps or smaps) can mix two states of
// the address space. Callers that need a consistent picture stop the process
// first.
//
// The package is Linux and x86-64 only. It does no ptrace and knows nothing
// of the image model in package core, of networking or of compression.
package proc
