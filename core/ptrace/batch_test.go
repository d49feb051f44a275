package ptrace

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/internal/testutil"
)

// batchFixture is a sigtrap workload, seized, with a scratch area of
// three writable pages and the batch code in a fourth.
type batchFixture struct {
	w       *testutil.Proc
	p       *Proc
	scratch uint64
}

func newBatchFixture(t *testing.T, mode string) *batchFixture {
	t.Helper()
	needRoot(t)
	w := testutil.Start(t, testutil.Build(t, "sigtrap"), mode)
	w.WaitLine(t, 10*time.Second, 0, "tick")
	tr := NewTracer()
	t.Cleanup(tr.Close)
	p, err := tr.Seize(w.PID)
	if err != nil {
		t.Fatal(err)
	}
	f := &batchFixture{w: w, p: p}
	t.Cleanup(func() { f.detach(t) })
	if err := p.FindGadget(); err != nil {
		t.Fatal(err)
	}
	f.scratch, err = p.Syscall(p.Leader(), "mmap", unix.SYS_MMAP, 0, 4*4096,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.MapBatchCode(p.Leader(), f.scratch+3*4096); err != nil {
		t.Fatal(err)
	}
	return f
}

// detach unmaps the scratch area and lets the workload run on.
func (f *batchFixture) detach(t *testing.T) {
	if f.p == nil {
		return
	}
	if _, err := f.p.Syscall(f.p.Leader(), "munmap", unix.SYS_MUNMAP, f.scratch, 4*4096); err != nil {
		t.Error(err)
	}
	f.p.ForgetBatchCode()
	if err := f.p.Detach(); err != nil {
		t.Error(err)
	}
	f.p = nil
}

// sigactionCalls reads the 64 signal actions into the scratch page.
func (f *batchFixture) sigactionCalls() []Call {
	calls := make([]Call, 64)
	for i := range calls {
		calls[i] = Call{Name: "rt_sigaction", Nr: unix.SYS_RT_SIGACTION, Args: [6]uint64{uint64(i + 1), 0, f.scratch + 32*uint64(i), 8}}
	}
	return calls
}

// actions runs the calls (batched or one by one) and returns the 64
// actions they read.
func (f *batchFixture) actions(t *testing.T, batched bool) []byte {
	t.Helper()
	if _, err := WriteMem(f.p.PID, f.scratch, make([]byte, 64*32)); err != nil {
		t.Fatal(err)
	}
	calls := f.sigactionCalls()
	if batched {
		ret, err := f.p.SyscallBatch(f.p.Leader(), f.scratch+4096, calls)
		if err != nil {
			t.Fatal(err)
		}
		if len(ret) != len(calls) {
			t.Fatalf("%d results for %d calls", len(ret), len(calls))
		}
	} else {
		for _, c := range calls {
			if _, err := f.p.Syscall(f.p.Leader(), c.Name, c.Nr, c.Args[:]...); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := make([]byte, 64*32)
	if _, err := ReadMem(f.p.PID, f.scratch, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// sigState is what SIGTRAP's batch may touch: the thread's signal sets.
func sigState(t *testing.T, pid int) [5]uint64 {
	t.Helper()
	st, err := proc.ReadTaskStatus(pid, pid)
	if err != nil {
		t.Fatal(err)
	}
	return [5]uint64{st.SigBlk, st.SigIgn, st.SigCgt, st.SigPnd, st.ShdPnd}
}

func (f *batchFixture) regs(t *testing.T) unix.PtraceRegs {
	t.Helper()
	var r unix.PtraceRegs
	if err := f.p.t.Do(func() error { return unix.PtraceGetRegs(f.p.PID, &r) }); err != nil {
		t.Fatal(err)
	}
	return r
}

// The batch reads the same 64 actions as 64 injected calls, leaves the
// registers and signal state as they were, and the process runs on.
func TestSyscallBatchSigactions(t *testing.T) {
	for _, mode := range []string{"plain", "handle"} {
		t.Run(mode, func(t *testing.T) {
			f := newBatchFixture(t, mode)
			if ok, err := f.p.BatchUsable(f.p.Leader()); err != nil || !ok {
				t.Fatalf("batch not usable on a thread that lets SIGTRAP through: %v", err)
			}
			before := sigState(t, f.w.PID)
			want := f.actions(t, false)
			got := f.actions(t, true)
			if !bytes.Equal(got, want) {
				t.Errorf("batched actions differ from per-call ones:\n%x\n%x", got, want)
			}
			if bytes.Equal(got, make([]byte, len(got))) {
				t.Error("no action read")
			}
			if after := sigState(t, f.w.PID); after != before {
				t.Errorf("signal state (blk ign cgt pnd shdpnd) %x after the batch, %x before", after, before)
			}
			if r := f.regs(t); r != f.p.Leader().Regs {
				t.Errorf("registers after the batch:\n%+v\nwant\n%+v", r, f.p.Leader().Regs)
			}
			f.detach(t)
			from := len(f.w.Lines(t))
			f.w.WaitLine(t, 10*time.Second, from, "tick")
			testutil.RequireRunning(t, f.w.PID)
			if after := sigState(t, f.w.PID); [3]uint64(after[:3]) != [3]uint64(before[:3]) {
				t.Errorf("signal state (blk ign cgt) %x after the detach, %x before", after[:3], before[:3])
			}
			for _, l := range f.w.Lines(t) {
				if strings.HasPrefix(l, "trap") {
					t.Errorf("the batch's SIGTRAP reached the process: %q", l)
				}
			}
		})
	}
}

// Where SIGTRAP is blocked, ignored or pending, the calls go one by one,
// with the same results, and SIGTRAP's action, mask and pending state stay.
func TestSyscallBatchFallback(t *testing.T) {
	for _, mode := range []string{"block", "ignore", "pending"} {
		t.Run(mode, func(t *testing.T) {
			fmode := mode
			if mode == "pending" {
				fmode = "handle"
			}
			f := newBatchFixture(t, fmode)
			if mode == "pending" {
				if err := unix.Tgkill(f.w.PID, f.w.PID, unix.SIGTRAP); err != nil {
					t.Fatal(err)
				}
				testutil.WaitFor(t, 5*time.Second, "SIGTRAP pending", func() bool {
					return sigState(t, f.w.PID)[3]&(1<<(unix.SIGTRAP-1)) != 0
				})
			}
			if ok, err := f.p.BatchUsable(f.p.Leader()); err != nil || ok {
				t.Fatalf("batch usable with SIGTRAP %s (%v)", mode, err)
			}
			before := sigState(t, f.w.PID)
			// Batched first: the first call injected takes a pending
			// signal off the queue (kept for the detach, as always).
			got := f.actions(t, true)
			want := f.actions(t, false)
			if !bytes.Equal(got, want) {
				t.Errorf("fallback actions differ from per-call ones")
			}
			after := sigState(t, f.w.PID)
			if mode == "pending" {
				if n := len(f.p.Leader().Stolen); n != 1 {
					t.Errorf("%d signals kept, want the pending SIGTRAP", n)
				}
				after[3] |= 1 << (unix.SIGTRAP - 1)
			}
			if after != before {
				t.Errorf("signal state (blk ign cgt pnd shdpnd) %x after, %x before", after, before)
			}
			f.detach(t)
			f.w.WaitLine(t, 10*time.Second, len(f.w.Lines(t)), "tick")
			if after := sigState(t, f.w.PID); [3]uint64(after[:3]) != [3]uint64(before[:3]) {
				t.Errorf("signal state (blk ign cgt) %x after the detach, %x before", after[:3], before[:3])
			}
			if mode == "pending" {
				// The process's own SIGTRAP is delivered, once.
				f.w.WaitLine(t, 10*time.Second, 0, "trap")
				f.w.WaitLine(t, 10*time.Second, len(f.w.Lines(t)), "tick")
				n := 0
				for _, l := range f.w.Lines(t) {
					if strings.HasPrefix(l, "trap") {
						n++
					}
				}
				if n != 1 {
					t.Errorf("SIGTRAP handled %d times, want once", n)
				}
			}
		})
	}
}

// A signal that reaches the thread during a batch is kept and delivered
// after the detach; a failing call is named.
func TestSyscallBatchSignalAndError(t *testing.T) {
	f := newBatchFixture(t, "plain")
	if err := unix.Tgkill(f.w.PID, f.w.PID, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "SIGUSR1 pending", func() bool {
		return sigState(t, f.w.PID)[3]&(1<<(unix.SIGUSR1-1)) != 0
	})
	calls := []Call{
		{Name: "getpid", Nr: unix.SYS_GETPID},
		{Name: "close(12345)", Nr: unix.SYS_CLOSE, Args: [6]uint64{12345}},
		{Name: "getppid", Nr: unix.SYS_GETPPID},
	}
	ret, err := f.p.SyscallBatch(f.p.Leader(), f.scratch+4096, calls)
	var se *SyscallError
	if !errors.As(err, &se) || se.Name != "close(12345)" || se.Errno != unix.EBADF {
		t.Fatalf("batch with a bad close: %v, want EBADF naming close(12345)", err)
	}
	if len(ret) != 3 || int(ret[0]) != f.w.PID || int(ret[2]) != unix.Getpid() {
		t.Errorf("results %v, want [%d -9 %d]", ret, f.w.PID, unix.Getpid())
	}
	if len(f.p.Leader().Stolen) != 1 {
		t.Errorf("%d signals kept during the batch, want SIGUSR1", len(f.p.Leader().Stolen))
	}
	if r := f.regs(t); r != f.p.Leader().Regs {
		t.Errorf("registers after the batch differ")
	}
	f.detach(t)
	f.w.WaitLine(t, 10*time.Second, 0, "usr1")
}

// The bytes of batchText are what the assembly in its comment assembles
// to (where GNU as is installed).
func TestBatchTextAssembles(t *testing.T) {
	as, err := exec.LookPath("as")
	if err != nil {
		testutil.Unavailable(t, "GNU as (binutils) to check the batch code")
	}
	objcopy, err := exec.LookPath("objcopy")
	if err != nil {
		testutil.Unavailable(t, "objcopy (binutils) to check the batch code")
	}
	src := `.intel_syntax noprefix
loop: mov rax, [r12]
      cmp rax, -1
      je done
      mov rdi, [r12+0x08]
      mov rsi, [r12+0x10]
      mov rdx, [r12+0x18]
      mov r10, [r12+0x20]
      mov r8, [r12+0x28]
      mov r9, [r12+0x30]
      syscall
      mov [r12+0x38], rax
      add r12, 0x40
      jmp loop
done: int3
`
	dir := t.TempDir()
	cmd := exec.Command(as, "-o", dir+"/b.o", "-")
	cmd.Stdin = strings.NewReader(src)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	if out, err := exec.Command(objcopy, "-O", "binary", "-j", ".text", dir+"/b.o", dir+"/b.bin").CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, out)
	}
	got, err := os.ReadFile(dir + "/b.bin")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, batchText) {
		t.Errorf("assembled % x\nbatchText % x", got, batchText)
	}
}
