package ptrace

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDetachUntouchedSigsuspend: a shell waiting in sigsuspend for its
// child's SIGCHLD, seized and detached untouched (as a refused dump leaves
// it), wakes when the child dies. With the interrupted call rewound on
// detach, a SIGCHLD handled before the shell ran again was followed by
// sigsuspend once more, and the shell slept for ever (a few times in 300).
func TestDetachUntouchedSigsuspend(t *testing.T) {
	needRoot(t)
	for i := range 100 {
		cmd := exec.Command("/bin/sh", "-c", "sleep 600 & wait")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := strconv.Itoa(cmd.Process.Pid)
		child := 0
		deadline := time.Now().Add(10 * time.Second)
		for child == 0 {
			b, _ := os.ReadFile("/proc/" + pid + "/task/" + pid + "/children")
			w, _ := os.ReadFile("/proc/" + pid + "/wchan")
			if f := strings.Fields(string(b)); len(f) == 1 && strings.HasPrefix(string(w), "sigsuspend") {
				child, _ = strconv.Atoi(f[0])
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("run %d: the shell %s did not wait in sigsuspend (wchan %q)", i, pid, w)
			}
			time.Sleep(time.Millisecond)
		}
		tr := NewTracer()
		p, err := tr.Seize(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Detach(); err != nil {
			t.Fatal(err)
		}
		tr.Close()
		unix.Kill(child, unix.SIGKILL)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			b, _ := os.ReadFile("/proc/" + pid + "/status")
			cmd.Process.Kill()
			<-done
			t.Fatalf("run %d: the shell did not wake for its child's death:\n%s", i, b)
		}
	}
}
