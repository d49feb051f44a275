// Package reap collects orphans for a process that is PID 1 of its PID
// namespace (or a child subreaper), such as `migrate serve` in a namespace
// of its own, without taking the exits that belong to someone else:
//
//   - children this process started and waits for itself (hook commands,
//     through Start and Wait): Go's exec.Cmd.Wait fails with ECHILD
//     ("waitid: no child processes") if a reaper took the exit first;
//   - processes being traced (a restore in progress): see Orphans.
//
// The set of own children is process-wide because reaping is: there is
// one reaper per process.
package reap

import (
	"context"
	"os/exec"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

var (
	mu  sync.Mutex
	own = map[int]bool{} // children whose exit their starter collects
)

// Start starts cmd and marks the child as one whose exit Wait collects,
// not Orphans. The mark is made before Orphans can look again, however
// soon the child exits.
func Start(cmd *exec.Cmd) error {
	mu.Lock()
	defer mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	own[cmd.Process.Pid] = true
	return nil
}

// Wait waits for cmd, started with Start, and forgets its child.
func Wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	mu.Lock()
	delete(own, cmd.Process.Pid)
	mu.Unlock()
	return err
}

// Own reports whether pid is a child started with Start and not yet
// waited for.
func Own(pid int) bool {
	mu.Lock()
	defer mu.Unlock()
	return own[pid]
}

// Orphans collects, every interval until ctx ends, the children that
// exited and that nobody else waits for. It never touches a process that
// is traced: waitid reports a tracee's ptrace stops to its tracer's
// process whatever the flags (CLD_TRAPPED), and reaping with wait4 would
// consume the stop the tracer waits for. So it only looks (WNOWAIT), and
// collects a child only when that look says it exited and it is not one of
// Start's, with a waitid that takes exits alone.
func Orphans(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		collect()
	}
}

// collect reaps the exited children that are orphans, until the first
// child the kernel shows is not one.
func collect() (n int) {
	mu.Lock()
	defer mu.Unlock()
	for {
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
			return n
		}
		pid := int(siginfoPID(&info))
		if pid == 0 || !exited(siginfoCode(&info)) || own[pid] {
			// Nothing; a ptrace stop (the tracer's business); or a
			// child whose starter waits for it. The kernel shows the
			// same child first until it is collected: try next time.
			return n
		}
		var done unix.Siginfo
		if err := unix.Waitid(unix.P_PID, pid, &done, unix.WEXITED|unix.WNOHANG, nil); err != nil {
			return n
		}
		n++
	}
}

// exited says whether a SIGCHLD si_code reports the child's end.
func exited(code int32) bool {
	const cldExited, cldKilled, cldDumped = 1, 2, 3
	return code == cldExited || code == cldKilled || code == cldDumped
}
