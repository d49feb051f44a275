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

// benchTracee starts sleep, seized and with its syscall gadget found; a
// cleanup detaches and kills it.
func benchTracee(b *testing.B) (*exec.Cmd, *Tracer, *Proc) {
	if unix.Geteuid() != 0 {
		b.Skip("needs root (ptrace of other processes)")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	t := NewTracer()
	b.Cleanup(t.Close)
	p, err := t.Seize(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Detach() })
	if err := p.FindGadget(); err != nil {
		b.Fatal(err)
	}
	return cmd, t, p
}

func benchSyscall(b *testing.B, pin bool) {
	cmd, t, p := benchTracee(b)
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

// BenchmarkSigactions reads the 64 signal actions of a stopped process by
// 64 injected calls (per-call) or one batch (batched): one op is the 64.
func BenchmarkSigactions(b *testing.B) {
	for _, batched := range []bool{false, true} {
		name := "per-call"
		if batched {
			name = "batched"
		}
		b.Run(name, func(b *testing.B) { benchSigactions(b, batched) })
	}
}

func benchSigactions(b *testing.B, batched bool) {
	cmd, _, p := benchTracee(b)
	th := p.Leader()
	scratch, err := p.Syscall(th, "mmap", unix.SYS_MMAP, 0, 4*4096,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := p.MapBatchCode(th, scratch+3*4096); err != nil {
		b.Fatal(err)
	}
	defer func() {
		p.Syscall(th, "munmap", unix.SYS_MUNMAP, scratch, 4*4096)
		p.ForgetBatchCode()
	}()
	calls := make([]Call, 64)
	for i := range calls {
		calls[i] = Call{Name: "rt_sigaction", Nr: unix.SYS_RT_SIGACTION, Args: [6]uint64{uint64(i + 1), 0, scratch + 32*uint64(i), 8}}
	}
	buf := make([]byte, 64*32)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if batched {
			if _, err := p.SyscallBatch(th, scratch+4096, calls); err != nil {
				b.Fatal(err)
			}
		} else {
			for _, c := range calls {
				if _, err := p.Syscall(th, c.Name, c.Nr, c.Args[:]...); err != nil {
					b.Fatal(err)
				}
			}
		}
		if _, err := ReadMem(cmd.Process.Pid, scratch, buf); err != nil {
			b.Fatal(err)
		}
	}
}
