package target

import (
	"os/exec"
	"testing"

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
