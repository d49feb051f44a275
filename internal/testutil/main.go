package testutil

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/osthread"
)

// The main goroutine keeps the main thread to itself, from the package
// inits on: no other goroutine runs there, so that none that changes its
// thread (a namespace entered, an fd table unshared) and ends locked can
// leave the main thread, the thread-group leader the kernel consults for
// the whole process (/proc/PID/ns, /proc/PID/fd, pidfd_getfd), changed.
// Go parks such a main thread rather than ending it. migrate's own code
// does that work on internal/osthread, which never uses the main thread;
// this covers the tests' helpers too.
func init() { osthread.KeepMain() }

// Main is the TestMain of every package of migrate that has tests: it makes
// the test process a child subreaper (restored processes become its
// children), marks inherited fds close-on-exec, runs the tests, removes the
// built fixtures, and fails a run that passed but left something behind: a
// child process, or an fd that was not open before the tests (other than the
// Go runtime's poller fds, made on first use). Fds are given a few seconds
// to close, as some close in the background (a packet socket is released
// after an RCU grace period). Under fuzzing the leak check is off: the fuzz
// engine keeps its own fds.
func Main(m *testing.M) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "prctl(PR_SET_CHILD_SUBREAPER): %v\n", err)
		os.Exit(1)
	}
	closeOnExec()
	detachTerminal()
	flag.Parse()
	check := flagValue("test.fuzz") == "" && flagValue("test.fuzzworker") != "true"
	// Start the runtime's poller first: its fds are not a leak.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before := openFDs()
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	if code == 0 && check {
		if kids := Children(); len(kids) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: tests left child processes: %s\n", describe(kids))
			code = 1
		}
		var leaked []string
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			leaked = newFDs(before, openFDs())
			if len(leaked) == 0 || time.Now().After(end) {
				break
			}
		}
		if len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: tests leaked fds: %s\n", strings.Join(leaked, ", "))
			code = 1
		}
	}
	os.Exit(code)
}

func flagValue(name string) string {
	if f := flag.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

// openFDs maps the test process's open fds to what they point at, leaving
// out the one that reads the fd directory.
func openFDs() map[int]string {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		panic(err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		panic(err)
	}
	m := make(map[int]string, len(names))
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil || fd == int(d.Fd()) {
			continue
		}
		m[fd], _ = os.Readlink("/proc/self/fd/" + n)
	}
	return m
}

// newFDs lists the fds open in after that were not in before, except the
// Go runtime's poller fds.
func newFDs(before, after map[int]string) []string {
	var out []string
	for fd, target := range after {
		if before[fd] == target || target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]" {
			continue
		}
		desc := strconv.Itoa(fd) + " -> " + target
		if target == "anon_inode:[pidfd]" {
			// Whose: fdinfo's "Pid:" line.
			if b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd)); err == nil {
				for _, l := range strings.Split(string(b), "\n") {
					if v, ok := strings.CutPrefix(l, "Pid:"); ok {
						desc += " (of pid " + strings.TrimSpace(v) + ")"
					}
				}
			}
		}
		out = append(out, desc)
	}
	slices.Sort(out)
	return out
}

// detachTerminal leaves the controlling terminal of a run started from
// one (make test in a terminal), so that the workloads the tests start
// have none: a dump refuses a process with a controlling terminal. A new
// session if this process may make one, else TIOCNOTTY.
func detachTerminal() {
	if _, err := unix.Setsid(); err == nil {
		return
	}
	if fd, err := unix.Open("/dev/tty", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0); err == nil {
		unix.IoctlSetInt(fd, unix.TIOCNOTTY, 0)
		unix.Close(fd)
	}
}
