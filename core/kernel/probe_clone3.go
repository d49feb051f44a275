package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// ProbeClone3SetTID asks a helper child to create a grandchild with a PID
// of its choosing (clone3 with set_tid), which restore needs to give a
// process back its PID. The raw clone3 runs in the helper, never in the
// calling process.
func ProbeClone3SetTID(ctx context.Context) (string, error) {
	h, kv, err := askHelper(ctx, "clone3", FeatureClone3, "clone3 with set_tid")
	if err != nil {
		return "", err
	}
	defer h.kill()
	if err := h.close(); err != nil {
		return "", err
	}
	return fmt.Sprintf("created a process with chosen pid %s (%s attempt)", kv["pid"], ordinal(kv["attempt"])), nil
}

func ordinal(n string) string {
	switch n {
	case "1":
		return "1st"
	case "2":
		return "2nd"
	case "3":
		return "3rd"
	}
	return n + "th"
}

// helperClone3 picks a free PID and clones a child with it. A PID that is
// taken between the choice and the clone (EEXIST) makes it try another.
func helperClone3(say func(string, ...any), _ *bufio.Scanner) {
	last, err := ReadProcInt("/proc/sys/kernel/ns_last_pid")
	if err != nil {
		say("err read ns_last_pid: %v", err)
		return
	}
	pidMax, err := ReadProcInt("/proc/sys/kernel/pid_max")
	if err != nil {
		say("err read pid_max: %v", err)
		return
	}
	candidate := last + 500
	for attempt := 1; attempt <= 5; attempt++ {
		pid := nextFreePID(candidate, pidMax)
		if pid < 0 {
			say("err no free pid found after ns_last_pid %d", last)
			return
		}
		got, err := raw.Clone3SetTID(pid)
		if errors.Is(err, unix.EEXIST) {
			candidate = pid + 1
			continue
		}
		if err != nil {
			sayErr(say, fmt.Sprintf("clone3 set_tid=%d", pid), err)
			return
		}
		var ws unix.WaitStatus
		err = raw.IgnoringEINTR(func() error {
			_, err := unix.Wait4(got, &ws, 0, nil)
			return err
		})
		if err != nil {
			say("err wait4 %d: %v", got, err)
			return
		}
		if got != pid {
			say("err clone3 set_tid=%d created pid %d", pid, got)
			return
		}
		say("ok pid=%d attempt=%d", got, attempt)
		return
	}
	say("err errno=%d clone3: every chosen pid was taken", int(unix.EEXIST))
}

// nextFreePID returns the first PID from start on (wrapping below pidMax)
// that no process or thread holds, or -1.
func nextFreePID(start, pidMax int) int {
	const reserved = 300 // the kernel's RESERVED_PIDS: wrapping starts here
	pid := start
	for range 10000 {
		if pid >= pidMax {
			pid = reserved
		}
		// /proc/N resolves thread ids too, though readdir lists only
		// thread group leaders.
		if _, err := os.Lstat("/proc/" + strconv.Itoa(pid)); errors.Is(err, os.ErrNotExist) {
			return pid
		}
		pid++
	}
	return -1
}

// ReadProcInt reads a file of /proc that holds one integer, such as a
// sysctl under /proc/sys.
func ReadProcInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}
