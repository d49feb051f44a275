package ptrace

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSyscall measures one injected system call (getpid) into a
// stopped process: the unit of most of the frozen window's work.
func BenchmarkSyscall(b *testing.B) { benchSyscall(b, false) }

// BenchmarkSyscallPinned is BenchmarkSyscall with the tracer thread bound
// to the CPU the tracee last ran on.
func BenchmarkSyscallPinned(b *testing.B) { benchSyscall(b, true) }

func benchSyscall(b *testing.B, pin bool) {
	if unix.Geteuid() != 0 {
		b.Skip("needs root (ptrace of other processes)")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	t := NewTracer()
	defer t.Close()
	p, err := t.Seize(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Detach()
	if err := p.FindGadget(); err != nil {
		b.Fatal(err)
	}
	if pin {
		cpu, err := LastCPU(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		if err := t.PinTo(cpu); err != nil {
			b.Fatal(err)
		}
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(cmd.Process.Pid, &set); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := p.Syscall(p.Leader(), "getpid", unix.SYS_GETPID); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if pin {
		// The same calls, all in one hop to the tracer thread.
		start := time.Now()
		t.Do(func() error {
			for i := 0; i < b.N; i++ {
				p.syscallLocked(p.Leader(), "getpid", unix.SYS_GETPID)
			}
			return nil
		})
		b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N), "ns/batched-op")
	}
}
