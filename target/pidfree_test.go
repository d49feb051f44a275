package target

import (
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/procmig/migrate/core/proc"
)

// TestPIDFreeWaitsForReap: a PID held by a process that has ended (a
// zombie its parent has not reaped yet, as a process just dumped and
// killed is for a moment) is free once the parent reaps it: pidFree waits
// for that instead of refusing at once; a live holder is refused.
func TestPIDFreeWaitsForReap(t *testing.T) {
	cmd := exec.Command("/bin/true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := proc.ReadStat(pid)
		if err == nil && st.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not end: %v", pid, err)
		}
		time.Sleep(time.Millisecond)
	}
	var taken *PIDInUseError
	if err := pidTaken(pid); !errors.As(err, &taken) {
		t.Fatalf("pidTaken(%d) of a zombie: %v, want a *PIDInUseError", pid, err)
	}
	go cmd.Wait() // the parent reaps it, while pidFree looks
	if err := pidFree(pid); err != nil {
		t.Fatalf("pidFree(%d) of a zombie being reaped: %v", pid, err)
	}
	if err := pidFree(os.Getpid()); !errors.As(err, &taken) {
		t.Fatalf("pidFree of this live process: %v, want a *PIDInUseError", err)
	}
}
