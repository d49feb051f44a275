package reap

import (
	"errors"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSiginfoPID: the PID of an exited child, read from the siginfo that
// waitid fills, is the child's.
func TestSiginfoPID(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Skipf("no true(1): %v", err)
	}
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if got := int(siginfoPID(&info)); got != cmd.Process.Pid {
		t.Fatalf("siginfoPID = %d, want %d", got, cmd.Process.Pid)
	}
	if code := siginfoCode(&info); !exited(code) {
		t.Fatalf("siginfoCode = %d for an exited child", code)
	}
	cmd.Wait()
}

// TestOwnChildrenKept is the race a busy machine showed: a PID 1 service
// reaped the shell of its own hook as it exited, and the hook failed with
// "waitid: no child processes". A child started with Start exits while
// the reaper runs as often as it can: Wait still gets its exit status. A
// child nobody waits for (an orphan) is collected.
func TestOwnChildrenKept(t *testing.T) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				collect()
			}
		}
	}()
	for i := range 50 {
		cmd := exec.Command("/bin/sh", "-c", "exit 7")
		if err := Start(cmd); err != nil {
			close(stop)
			t.Skipf("no /bin/sh: %v", err)
		}
		err := Wait(cmd)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			close(stop)
			t.Fatalf("run %d: Wait: %v, want exit status 7", i, err)
		}
		if Own(cmd.Process.Pid) {
			t.Errorf("run %d: child %d still marked after Wait", i, cmd.Process.Pid)
		}
	}
	close(stop)
	<-done

	orphan := exec.Command("true")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	pid := orphan.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		collect()
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if errors.Is(err, unix.ECHILD) {
			break // collected
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d, which nobody waits for, was not collected", pid)
		}
		time.Sleep(time.Millisecond) // polling the child's end, bounded above
	}
}
