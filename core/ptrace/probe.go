package ptrace

import (
	"fmt"
	"os/exec"

	"golang.org/x/sys/unix"
)

// ProbeInjection starts a short-lived child, seizes it, injects getpid()
// into it and checks the answer. It is what `migrate check` reports as
// "syscall injection".
func ProbeInjection() error {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start probe child: %w", err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	t := NewTracer()
	defer t.Close()
	p, err := t.Seize(cmd.Process.Pid)
	if err != nil {
		return err
	}
	defer p.Detach()
	if err := p.FindGadget(); err != nil {
		return err
	}
	got, err := p.Syscall(p.Leader(), "getpid", unix.SYS_GETPID)
	if err != nil {
		return err
	}
	if int(got) != cmd.Process.Pid {
		return fmt.Errorf("injected getpid returned %d, want %d", got, cmd.Process.Pid)
	}
	return nil
}
