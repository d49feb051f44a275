package ptrace

import "testing"

// StepOut single-steps a thread out of a range: from one byte at its
// instruction pointer it leaves at the first step; with no steps allowed
// it stays; the process runs on after the detach.
func TestStepOut(t *testing.T) {
	needRoot(t)
	cmd := startChild(t, "sh", "-c", "i=0; while :; do i=$((i+1)); done")
	tr := NewTracer()
	defer tr.Close()
	var p *Proc
	var err error
	for tries := 0; ; tries++ {
		if p, err = tr.Seize(cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		if p.Leader().Restart == "" {
			break
		}
		// In a system call (a rare one for this loop): try again.
		if err := p.Detach(); err != nil || tries == 100 {
			t.Fatalf("the shell is in a system call every time it is seized (%v)", err)
		}
	}
	th := p.Leader()
	rip := th.Regs.Rip
	err = tr.Do(func() error {
		left, err := p.StepOut(th, rip, rip+1, 0)
		if err != nil || left || th.Regs.Rip != rip {
			t.Errorf("no steps allowed: left %v at %#x (%v), want it still at %#x", left, th.Regs.Rip, err, rip)
		}
		left, err = p.StepOut(th, rip, rip+1, 10)
		if err != nil || !left || th.Regs.Rip == rip {
			t.Errorf("10 steps allowed: left %v at %#x (%v), want it out of %#x", left, th.Regs.Rip, err, rip)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	if st := state(cmd.Process.Pid); st != "R" && st != "S" {
		t.Errorf("state %q after the detach, want it running", st)
	}
}
