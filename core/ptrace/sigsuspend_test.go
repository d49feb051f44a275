package ptrace

import (
	"fmt"
	"io"
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
		cmd, child := shellInSigsuspend(t, i)
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
		shellWakes(t, i, cmd, done)
	}
}

// shellWakes waits for the shell of run i to end (done: its cmd.Wait)
// now that its child is dead, and fails with the shell's status if it
// sleeps on.
func shellWakes(t *testing.T, i int, cmd *exec.Cmd, done <-chan error) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		cmd.Process.Kill()
		<-done
		t.Fatalf("run %d: the shell did not wake for its child's death:\n%s", i, b)
	}
}

// shellInSigsuspend starts a shell waiting in sigsuspend for its one
// child (a sleep), and returns it and the child's PID. Run i names it in
// failures.
func shellInSigsuspend(t *testing.T, i int) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "sleep 600 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile("/proc/" + pid + "/task/" + pid + "/children")
		w, _ := os.ReadFile("/proc/" + pid + "/wchan")
		if f := strings.Fields(string(b)); len(f) == 1 && strings.HasPrefix(string(w), "sigsuspend") {
			child, _ := strconv.Atoi(f[0])
			return cmd, child
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("run %d: the shell %s did not wait in sigsuspend (wchan %q)", i, pid, w)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestDetachInjectedSigsuspend: a shell waiting in sigsuspend for its
// child, seized and injected into (as a dump --leave-running or a rolled
// back migration leaves it), then detached: with no signal, it waits on
// in sigsuspend (the call restarted); with its child's SIGCHLD queued
// while it was stopped, it wakes and reaps the child. Rewound in the
// syscall stop where the injection left it, sigsuspend ran again after
// the SIGCHLD handler, and the shell slept for ever.
func TestDetachInjectedSigsuspend(t *testing.T) {
	needRoot(t)
	for i := range 20 {
		cmd, child := shellInSigsuspend(t, i)
		pid := strconv.Itoa(cmd.Process.Pid)
		inSigsuspend := func() bool {
			w, _ := os.ReadFile("/proc/" + pid + "/wchan")
			return strings.HasPrefix(string(w), "sigsuspend")
		}
		seizeInject := func() {
			t.Helper()
			tr := NewTracer()
			defer tr.Close()
			p, err := tr.Seize(cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			if p.Threads[0].Restart != "restart" {
				t.Fatalf("run %d: the shell was seized outside an interrupted call", i)
			}
			if err := p.FindGadget(); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Syscall(p.Leader(), "getpid", unix.SYS_GETPID); err != nil {
				t.Fatal(err)
			}
			if i%2 == 1 {
				// The child's death while the shell is stopped: its
				// SIGCHLD waits, queued, for the detach.
				unix.Kill(child, unix.SIGKILL)
				for st := stateOf(child); st != 'Z' && st != 0; st = stateOf(child) {
					time.Sleep(time.Millisecond)
				}
			}
			if err := p.Detach(); err != nil {
				t.Fatal(err)
			}
		}
		seizeInject()
		// Waited for only now: a wait of the parent, which is this
		// process, takes its tracee's ptrace stops too.
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if i%2 == 0 {
			// No signal: back in sigsuspend, then woken by the death.
			for !inSigsuspend() {
				if stateOf(cmd.Process.Pid) == 0 {
					t.Fatalf("run %d: the shell ended with its child alive", i)
				}
				time.Sleep(time.Millisecond)
			}
			unix.Kill(child, unix.SIGKILL)
		}
		shellWakes(t, i, cmd, done)
	}
}

// TestDetachInjectedPause: a program in pause(2) with a handler for
// SIGUSR1 (Python's signal.pause), seized and injected into, given a
// SIGUSR1 while stopped, then detached, sees pause end (EINTR, its
// handler run) and goes on. In the syscall stop where the injection left
// it, the call could only be rewound: pause ran again after the handler,
// for ever.
func TestDetachInjectedPause(t *testing.T) {
	needRoot(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skipf("python3 (its signal.pause is the program in pause): %v", err)
	}
	for i := range 5 {
		cmd := exec.Command(python, "-c", "import signal; signal.signal(signal.SIGUSR1, lambda *a: None); signal.pause(); print('woke')")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := strconv.Itoa(cmd.Process.Pid)
		deadline := time.Now().Add(30 * time.Second)
		for {
			b, _ := os.ReadFile("/proc/" + pid + "/syscall")
			if f := strings.Fields(string(b)); len(f) > 0 && f[0] == strconv.Itoa(unix.SYS_PAUSE) {
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("run %d: python %s did not call pause", i, pid)
			}
			time.Sleep(time.Millisecond)
		}
		tr := NewTracer()
		p, err := tr.Seize(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.FindGadget(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Syscall(p.Leader(), "getpid", unix.SYS_GETPID); err != nil {
			t.Fatal(err)
		}
		unix.Kill(cmd.Process.Pid, unix.SIGUSR1)
		if err := p.Detach(); err != nil {
			t.Fatal(err)
		}
		tr.Close()
		// Waited for only now: a wait of the parent, which is this
		// process, takes its tracee's ptrace stops too.
		done := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(out)
			cmd.Wait()
			done <- b
		}()
		select {
		case b := <-done:
			if string(b) != "woke\n" {
				t.Fatalf("run %d: python wrote %q, want \"woke\"", i, b)
			}
		case <-time.After(10 * time.Second):
			b, _ := os.ReadFile("/proc/" + pid + "/syscall")
			cmd.Process.Kill()
			<-done
			t.Fatalf("run %d: pause did not end with the signal handled (in system call %s)", i, b)
		}
	}
}
