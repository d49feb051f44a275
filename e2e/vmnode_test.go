package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate"
	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/raw"
	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// The VM node: Debian's cloud kernel (6.1, soft-dirty) under qemu (TCG)
// as the other host of a live migration, booted from an initramfs with
// e2e/vm/init in node mode, a static migrate and the static workloads at
// their host paths. make vmtest-live runs its test.

// vmBoot bounds the VM's boot, vmMigrate a migration to or from it (TCG
// runs the VM's side tens of times slower than the host).
const (
	vmBoot    = 3 * time.Minute
	vmMigrate = 5 * time.Minute
)

// vmNode is a booted VM node.
type vmNode struct {
	Serve  string // host address forwarded to the VM's migrate serve
	Agent  string // base URL of the VM's agent
	Serial string // the serial console's log
	XCR0   uint64 // the VM's CPU's XSAVE features
	Boot   time.Duration
	Kernel string
}

// bootVM boots a VM node with kernel directory kdir (scripts/vmkernel.sh),
// the kernel command line's params added (e2e/vm/init's migrate.*), and
// the host's files (each at its own path, a directory empty) in its
// initramfs. A cleanup kills qemu.
func bootVM(t *testing.T, kdir, params string, files ...string) *vmNode {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		testutil.Unavailable(t, "qemu-system-x86_64 (qemu-system-x86): %v", err)
	}
	if _, err := exec.LookPath("cpio"); err != nil {
		testutil.Unavailable(t, "cpio: %v", err)
	}
	work := t.TempDir()
	stage := filepath.Join(work, "root")
	if err := os.MkdirAll(filepath.Join(stage, "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	goBuild := func(out, pkg string) {
		cmd := exec.Command("go", "build", "-o", filepath.Join(stage, out), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s (static): %v\n%s", pkg, err, b)
		}
	}
	goBuild("init", "github.com/procmig/migrate/e2e/vm/init")
	goBuild("migrate", "github.com/procmig/migrate/cmd/migrate")
	mods, err := os.ReadDir(filepath.Join(kdir, "modules"))
	if err != nil {
		testutil.Unavailable(t, "the VM's kernel modules (scripts/vmkernel.sh): %v", err)
	}
	for _, m := range mods {
		copyFile(t, filepath.Join(kdir, "modules", m.Name()), filepath.Join(stage, "modules", m.Name()))
	}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.IsDir() {
			if err := os.MkdirAll(filepath.Join(stage, f), 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		copyFile(t, f, filepath.Join(stage, f))
	}
	initrd := filepath.Join(work, "initrd")
	cpio := exec.Command("sh", "-c", `find . -mindepth 1 | cpio -o -H newc --quiet >"$0"`, initrd)
	cpio.Dir = stage
	if b, err := cpio.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, b)
	}

	vm := &vmNode{}
	servePort, agentPort := freePort(t), freePort(t)
	vm.Serve = fmt.Sprintf("127.0.0.1:%d", servePort)
	vm.Agent = fmt.Sprintf("http://127.0.0.1:%d", agentPort)
	// boot boots the VM once, its console in serial; it returns whether
	// the node came up, and whether the kernel died before migrate's init
	// said anything (an oops at boot under TCG: Debian's 6.12 once hit an
	// int3 of its own text patching in a timer interrupt, at 1.4 s).
	var start time.Time
	boot := func(serial string) (ready, earlyPanic bool) {
		// TCG's "max" CPU but for MPX and protection keys: XSAVE features
		// no x86-64 host of today has both of (x87, SSE and AVX remain,
		// and TCG has no AVX-512), so that a process started in the VM
		// may move to this host under the CPU rule.
		cmd := exec.Command(qemu, "-display", "none", "-no-reboot", "-m", "1024", "-smp", "2", "-cpu", "max,mpx=off,pku=off",
			"-kernel", filepath.Join(kdir, "vmlinuz"), "-initrd", initrd,
			"-append", "console=ttyS0 panic=-1 quiet migrate.mode=node "+params,
			"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:7070,hostfwd=tcp:127.0.0.1:%d-:7071", servePort, agentPort),
			"-device", "virtio-net-pci,netdev=n0",
			"-serial", "file:"+serial, "-monitor", "none")
		qlog, err := os.Create(serial + ".qemu")
		if err != nil {
			t.Fatal(err)
		}
		defer qlog.Close()
		cmd.Stdout, cmd.Stderr = qlog, qlog
		start = time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatalf("qemu: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Process.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
			if t.Failed() {
				b, _ := os.ReadFile(serial)
				q, _ := os.ReadFile(qlog.Name())
				t.Logf("VM serial console:\n%s\nqemu:\n%s", b, q)
			}
		})
		testutil.WaitFor(t, vmBoot, "the VM node to boot (vmnode: ready on its console)", func() bool {
			b, _ := os.ReadFile(serial)
			ready = bytes.Contains(b, []byte("vmnode: ready"))
			select {
			case <-exited:
				earlyPanic = bytes.Contains(b, []byte("Kernel panic")) && !bytes.Contains(b, []byte("vmnode:"))
				return true
			default:
			}
			return ready || bytes.Contains(b, []byte("vmnode: FAIL"))
		})
		return ready, earlyPanic
	}
	for attempt := 1; ; attempt++ {
		vm.Serial = filepath.Join(work, fmt.Sprintf("serial-%d.log", attempt))
		ready, earlyPanic := boot(vm.Serial)
		if ready {
			break
		}
		if !earlyPanic || attempt == 3 {
			t.Fatalf("the VM node did not come up")
		}
		b, _ := os.ReadFile(vm.Serial)
		t.Logf("the VM's kernel died as it booted, before migrate's init ran (booted again):\n%s", b)
	}
	vm.Boot = time.Since(start)
	b, _ := os.ReadFile(vm.Serial)
	if _, rest, ok := bytes.Cut(b, []byte("vmtest-kernel: ")); ok {
		vm.Kernel, _, _ = strings.Cut(string(rest), "\n")
	}
	var info struct {
		XCR0 uint64 `json:"xcr0"`
	}
	vm.call(t, "GET", "/info", nil, &info)
	vm.XCR0 = info.XCR0
	return vm
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, st.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

// freePort returns a loopback TCP port free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// call sends a request to the VM's agent (e2e/vm/init/node.go) and
// decodes its JSON answer into out (if not nil); it fails the test on
// an error status.
func (vm *vmNode) call(t *testing.T, method, path string, body any, out any) {
	t.Helper()
	if code, b := vm.do(t, method, path, body); code != http.StatusOK {
		t.Fatalf("VM agent %s %s: %d %s", method, path, code, b)
	} else if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("VM agent %s %s: %q: %v", method, path, b, err)
		}
	}
}

func (vm *vmNode) do(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, vm.Agent+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	c := http.Client{Timeout: vmMigrate}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("VM agent %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("VM agent %s %s: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// file returns a file of the VM, and whether it is there.
func (vm *vmNode) file(t *testing.T, path string) ([]byte, bool) {
	t.Helper()
	code, b := vm.do(t, "GET", "/file?path="+url.QueryEscape(path), nil)
	return b, code == http.StatusOK
}

// put writes a file in the VM.
func (vm *vmNode) put(t *testing.T, path string, data []byte) {
	t.Helper()
	vm.call(t, "PUT", "/file?path="+url.QueryEscape(path), data, nil)
}

// setClock sets the VM's CLOCK_REALTIME to the host's (to the time a
// request takes over qemu's network): hosts keep theirs by NTP, and the
// clocks of a migrated process are carried by the realtime clocks.
func (vm *vmNode) setClock(t *testing.T) {
	t.Helper()
	vm.call(t, "POST", "/clock", map[string]int64{"unix_ns": time.Now().UnixNano()}, nil)
}

// start starts argv in the VM (in a session of its own, in dir, stdout
// and stderr appended to log) and returns its PID.
func (vm *vmNode) start(t *testing.T, dir, log string, argv ...string) int {
	t.Helper()
	var r struct {
		PID int `json:"pid"`
	}
	vm.call(t, "POST", "/start", map[string]any{"argv": argv, "dir": dir, "log": log, "env": vmWorkloadEnv}, &r)
	return r.PID
}

// migrateFrom runs `migrate --to TO --insecure --json PID` in the VM and
// returns what it printed (a report, or the error and the refusal's kind)
// and its stderr.
func (vm *vmNode) migrateFrom(t *testing.T, pid int, to string, extra ...string) (vmMigration, string) {
	t.Helper()
	var r struct {
		Code   int    `json:"code"`
		Stdout string `json:"stdout"`
		Stderr string `json:"stderr"`
	}
	argv := append(append([]string{"/migrate", "--to", to, "--insecure", "--json", "-v"}, extra...), strconv.Itoa(pid))
	vm.call(t, "POST", "/run", map[string]any{"argv": argv}, &r)
	var m vmMigration
	if err := json.Unmarshal([]byte(r.Stdout), &m); err != nil {
		t.Fatalf("migrate --to %s in the VM (exit %d): %q: %v\n%s", to, r.Code, r.Stdout, err, r.Stderr)
	}
	if (r.Code == 0) != (m.Error == "") {
		t.Fatalf("migrate --to %s in the VM: exit %d with %+v\n%s", to, r.Code, m, r.Stderr)
	}
	return m, r.Stderr
}

// vmMigration is what `migrate --to --json` prints.
type vmMigration struct {
	Outcome    string              `json:"outcome"`
	Tracker    string              `json:"tracker"`
	DowntimeMS float64             `json:"downtime_ms"`
	TotalMS    float64             `json:"total_ms"`
	Error      string              `json:"error"`
	Refused    migrate.RefusalKind `json:"refused"`
}

// vmLines are the lines of a log in the VM.
func (vm *vmNode) lines(t *testing.T, path string) []string {
	t.Helper()
	b, _ := vm.file(t, path)
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

// waitTick waits for tick n in a log of the VM and returns its lines.
func (vm *vmNode) waitTick(t *testing.T, path string, n int) []string {
	t.Helper()
	var lines []string
	testutil.WaitFor(t, vmMigrate, fmt.Sprintf("tick %d in the VM's %s", n, path), func() bool {
		lines = vm.lines(t, path)
		ticks := testutil.Ticks(lines)
		return len(ticks) > 0 && ticks[len(ticks)-1] >= n
	})
	return lines
}

// running says whether pid runs in the VM, untraced.
func (vm *vmNode) running(t *testing.T, pid int) bool {
	t.Helper()
	b, ok := vm.file(t, fmt.Sprintf("/proc/%d/status", pid))
	return ok && bytes.Contains(b, []byte("\nTracerPid:\t0\n")) && !bytes.Contains(b, []byte("\nState:\tZ"))
}

// vmWorkloadEnv is the workloads' environment on both hosts.
var vmWorkloadEnv = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}

// vmRefusal is the refusal this migrate gives a live migration between
// this host and the VM (from: the source's XSAVE features; to: the
// target's), "" if none: the CPU rule (a process started on a CPU with
// XSAVE features the target lacks may use them). The other kernel's vdso
// is no refusal: the restore goes through the vdso proxy.
func vmRefusal(from, to uint64) migrate.RefusalKind {
	if _, offered := (&core.CPUFeatures{XCR0: from}).Missing(to); offered != 0 {
		return migrate.RefusedCPU
	}
	return ""
}

// TestVMLive moves a process with timers live between this host and a VM
// running Debian's 6.1 cloud kernel (another kernel, another clock, a
// CPU without AVX-512, soft-dirty as the VM's dirty tracker), both ways:
// the process (clocks: a timerfd, clock_nanosleep and nanosleep on
// CLOCK_MONOTONIC, and 256 KiB of memory it checks each round) either
// arrives with its memory and its timers on schedule, or is refused by
// kind before anything is frozen and runs on where it was.
func TestVMLive(t *testing.T) {
	testutil.RequireRoot(t)
	kdir := os.Getenv("MIGRATE_VM_KERNEL")
	if kdir == "" {
		t.Skip("the VM node test runs under make vmtest-live (MIGRATE_VM_KERNEL: the kernel directory scripts/vmkernel.sh prints)")
	}
	hostXCR0, ok := raw.XCR0()
	if !ok {
		testutil.Unavailable(t, "XSAVE on this CPU")
	}
	bin := testutil.BuildStatic(t, "clocks")
	work := t.TempDir()
	vm := bootVM(t, kdir, "", bin, work)
	t.Logf("vmtest-live: VM node: kernel %s, booted in %.1f s, XSAVE features %#x (%s); this host's %#x (%s)",
		vm.Kernel, vm.Boot.Seconds(), vm.XCR0, core.XSAVENames(vm.XCR0), hostXCR0, core.XSAVENames(hostXCR0))
	vm.setClock(t)

	// The same migration within this host's kernel, for comparison.
	t.Run("host to host", func(t *testing.T) {
		p := testutil.StartWith(t, testutil.Options{Dir: work, Env: vmWorkloadEnv}, bin, "mem=256")
		p.WaitLine(t, short, 0, "ready")
		p.WaitTick(t, long, 3)
		r, rep := migrateLive(t, p, startServeWith(t, serveOptions{}), source.MigrateOptions{})
		t.Logf("vmtest-live: host to host (one kernel): moved, tracker %s, downtime %.1f ms, total %.1f ms", rep.Tracker, rep.DowntimeMS, rep.TotalMS)
		r.WaitTick(t, long, r.LastTick(t)+3)
		checkVMTicks(t, r.Lines(t))
	})

	t.Run("host to VM", func(t *testing.T) {
		log := filepath.Join(work, "to-vm.log")
		vm.put(t, log, nil) // the log it has open (O_APPEND) is a file of the VM's
		p := testutil.StartWith(t, testutil.Options{Dir: work, Log: log, Env: vmWorkloadEnv}, bin, "mem=256")
		p.WaitLine(t, short, 0, "ready")
		p.WaitTick(t, long, 3)
		ctx, cancel := context.WithTimeout(context.Background(), vmMigrate)
		defer cancel()
		// The log it writes is a file of this host's: copied (--sync).
		rep, err := migrate.Migrate(ctx, p.PID, vm.Serve, migrate.MigrateOptions{Auth: migrate.Auth{Insecure: true}, Logger: testLogger(t), Sync: []string{log}})
		want := vmRefusal(hostXCR0, vm.XCR0)
		var re *migrate.RefusedError
		switch {
		case want != "" && (!errors.As(err, &re) || re.Kind != want):
			t.Fatalf("migrate to the VM: %v (report %+v), want refused (%s)", err, rep, want)
		case want != "":
			tracker := ""
			if rep != nil {
				tracker = rep.Tracker
			}
			t.Logf("vmtest-live: host to VM: refused (%s) after pre-copy with tracker %q (this host), the original runs on: %v", re.Kind, tracker, err)
			last := p.LastTick(t)
			p.WaitTick(t, long, last+2)
			checkRunningUntraced(t, p.PID)
			checkClockTicks(t, p.Lines(t))
			return
		case err != nil:
			t.Fatalf("migrate to the VM: %v", err)
		}
		t.Logf("vmtest-live: host to VM: moved, tracker %s (this host), downtime %.1f ms, total %.1f ms", rep.Tracker, rep.DowntimeMS, rep.TotalMS)
		last := p.LastTick(t)
		checkVMTicks(t, vm.waitTick(t, log, last+4)) // the whole log: synced, then written on
	})

	// The same, the process started so as to use no AVX-512 (glibc's
	// string functions masked by its tunables; and no RTM either, which
	// this host has and the VM's CPU lacks: glibc's *_rtm variants run
	// xtest, a SIGILL there, a feature outside XSAVE that migrate does
	// not compare) and the migration told to check only the XSAVE
	// features its threads hold (--cpu-check in-use): it moves to the
	// VM's CPU, which lacks AVX-512.
	t.Run("host to VM, in use only", func(t *testing.T) {
		log := filepath.Join(work, "to-vm-inuse.log")
		vm.put(t, log, nil)
		env := append(slices.Clone(vmWorkloadEnv), "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX512ER,-AVX512PF,-RTM")
		p := testutil.StartWith(t, testutil.Options{Dir: work, Log: log, Env: env}, bin, "mem=256")
		p.WaitLine(t, short, 0, "ready")
		p.WaitTick(t, long, 3)
		ctx, cancel := context.WithTimeout(context.Background(), vmMigrate)
		defer cancel()
		rep, err := migrate.Migrate(ctx, p.PID, vm.Serve, migrate.MigrateOptions{Auth: migrate.Auth{Insecure: true}, Logger: testLogger(t), CPUInUseOnly: true, Sync: []string{log}})
		if err != nil {
			t.Fatalf("migrate to the VM, checking the features in use only: %v", err)
		}
		t.Logf("vmtest-live: host to VM (--cpu-check in-use, AVX-512 masked by glibc's tunables): moved, tracker %s (this host), downtime %.1f ms, total %.1f ms", rep.Tracker, rep.DowntimeMS, rep.TotalMS)
		last := p.LastTick(t)
		if !testutil.Poll(time.Minute, func() bool {
			ticks := testutil.Ticks(vm.lines(t, log))
			return len(ticks) > 0 && ticks[len(ticks)-1] >= last+4
		}) {
			for _, f := range []string{"status", "syscall", "stat", "wchan", "maps"} {
				b, _ := vm.file(t, fmt.Sprintf("/proc/%d/%s", p.PID, f))
				t.Logf("the process in the VM, %s:\n%s", f, b)
			}
			t.Logf("its log there:\n%s", strings.Join(vm.lines(t, log), "\n"))
			t.Fatalf("no tick in the VM a minute after the migration")
		}
		checkVMTicks(t, vm.waitTick(t, log, last+4))
	})

	t.Run("VM to host", func(t *testing.T) {
		log := filepath.Join(work, "to-host.log")
		if err := os.WriteFile(log, nil, 0o644); err != nil { // the log it has open, a file of this host's
			t.Fatal(err)
		}
		pid := vm.start(t, work, log, bin, "mem=256")
		vm.waitTick(t, log, 3)
		s := startServeWith(t, serveOptions{})
		_, port, _ := net.SplitHostPort(s.Addr)
		m, stderr := vm.migrateFrom(t, pid, "10.0.2.2:"+port, "--sync", log)
		if m.Tracker != "" && m.Tracker != "soft-dirty" {
			t.Errorf("the VM's tracker was %s, want soft-dirty (its kernel's best: no uffd-wp of the kind migrate needs)", m.Tracker)
		}
		want := vmRefusal(vm.XCR0, hostXCR0)
		switch {
		case want != "" && m.Refused != want:
			t.Fatalf("migrate from the VM: %+v, want refused (%s)\n%s", m, want, stderr)
		case want != "":
			t.Logf("vmtest-live: VM to host: refused (%s) after pre-copy with tracker %q (the VM), the original runs on: %s", m.Refused, m.Tracker, m.Error)
			last := testutil.Ticks(vm.lines(t, log))
			lines := vm.waitTick(t, log, last[len(last)-1]+2)
			if !vm.running(t, pid) {
				t.Errorf("the original %d in the VM is not running untraced after the refusal", pid)
			}
			checkClockTicks(t, lines)
			return
		case m.Error != "":
			t.Fatalf("migrate from the VM: %+v\n%s", m, stderr)
		}
		t.Logf("vmtest-live: VM to host: moved, tracker %s (the VM), downtime %.1f ms, total %.1f ms", m.Tracker, m.DowntimeMS, m.TotalMS)
		if m.Tracker != "soft-dirty" {
			t.Errorf("the VM's tracker was %q, want soft-dirty", m.Tracker)
		}
		r := migrated(findInNamespace(t, pid), log)
		checkRunningUntraced(t, r.PID)
		vmLines := vm.lines(t, log)
		ticks := testutil.Ticks(vmLines)
		r.WaitTick(t, long, ticks[len(ticks)-1]+4)
		checkVMTicks(t, r.Lines(t)) // the whole log: synced, then written on

		// And back to the VM, by a migrate in the service's PID and
		// mount namespaces (where the process is pid).
		out, err := exec.Command("nsenter", "--target", strconv.Itoa(s.PID), "--pid", "--mount", "--",
			buildMigrate(t), "--to", vm.Serve, "--insecure", "--json", "--sync", log, strconv.Itoa(pid)).Output()
		var back vmMigration
		if jerr := json.Unmarshal(out, &back); jerr != nil || (err == nil) != (back.Error == "") {
			t.Fatalf("migrate back to the VM: %v: %q (%v)", err, out, jerr)
		}
		want = vmRefusal(hostXCR0, vm.XCR0)
		switch {
		case want != "" && back.Refused != want:
			t.Fatalf("migrate back to the VM: %+v, want refused (%s)", back, want)
		case want != "":
			t.Logf("vmtest-live: back to the VM: refused (%s) after pre-copy with tracker %q (this host), the process runs on here: %s", back.Refused, back.Tracker, back.Error)
			r.WaitTick(t, long, r.LastTick(t)+2)
			checkRunningUntraced(t, r.PID)
			checkVMTicks(t, r.Lines(t))
			return
		case back.Error != "":
			t.Fatalf("migrate back to the VM: %+v", back)
		}
		t.Logf("vmtest-live: back to the VM: moved, tracker %s (this host), downtime %.1f ms, total %.1f ms", back.Tracker, back.DowntimeMS, back.TotalMS)
		hostLines := r.Lines(t)
		lines := vm.waitTick(t, log, testutil.Ticks(hostLines)[len(testutil.Ticks(hostLines))-1]+4)
		if !vm.running(t, pid) {
			t.Errorf("the process %d is not running untraced in the VM", pid)
		}
		checkVMTicks(t, lines)
	})

	t.Run("VM to VM", func(t *testing.T) { testVMToVM(t, vm, bin, work) })
}

// A process moves live from a VM running Debian's 6.12 cloud kernel to
// the one running 6.1: another kernel (another vdso, other clocks) on the
// target, the same CPU, where this host's AVX-512 keeps a process of its
// own from moving there.
func testVMToVM(t *testing.T, vm *vmNode, bin, work string) {
	kdir := os.Getenv("MIGRATE_VM_KERNEL2")
	if kdir == "" {
		testutil.Unavailable(t, "a second kernel for the VM to VM test (MIGRATE_VM_KERNEL2: the directory scripts/vmkernel.sh linux-image-6.12-cloud-amd64 prints; make vmtest-live sets it)")
	}
	// Its PIDs far from the other VM's, booted alike.
	src := bootVM(t, kdir, "migrate.lastpid=200000", bin, work)
	src.setClock(t)
	t.Logf("vmtest-live: VM node 2: kernel %s, booted in %.1f s, XSAVE features %#x", src.Kernel, src.Boot.Seconds(), src.XCR0)
	log := filepath.Join(work, "vm-to-vm.log")
	vm.put(t, log, nil) // the log it has open, a file of each VM's
	pid := src.start(t, work, log, bin, "mem=256")
	src.waitTick(t, log, 3)
	_, port, _ := net.SplitHostPort(vm.Serve)
	m, stderr := src.migrateFrom(t, pid, "10.0.2.2:"+port, "--sync", log)
	if want := vmRefusal(src.XCR0, vm.XCR0); m.Refused != want || (want == "" && m.Error != "") {
		t.Fatalf("migrate from VM %s to VM %s: %+v, want refused %q\n%s", src.Kernel, vm.Kernel, m, want, stderr)
	} else if want != "" {
		t.Logf("vmtest-live: VM %s to VM %s: refused (%s): %s", src.Kernel, vm.Kernel, m.Refused, m.Error)
		return
	}
	t.Logf("vmtest-live: VM %s to VM %s: moved, tracker %s (the source VM), downtime %.1f ms, total %.1f ms", src.Kernel, vm.Kernel, m.Tracker, m.DowntimeMS, m.TotalMS)
	srcLines := src.lines(t, log)
	ticks := testutil.Ticks(srcLines)
	lines := vm.waitTick(t, log, ticks[len(ticks)-1]+4)
	if !vm.running(t, pid) {
		t.Errorf("the process %d is not running untraced in the VM", pid)
	}
	checkVMTicks(t, lines) // the whole log: synced, then written on
}

// checkVMTicks checks the ticks of a process that moved between the
// hosts: every round on schedule (checkClockTicks) and no memory check
// failed.
func checkVMTicks(t *testing.T, lines []string) {
	t.Helper()
	for _, l := range lines {
		if strings.HasPrefix(l, "FAIL") {
			t.Errorf("the workload said %q", l)
		}
	}
	checkClockTicks(t, lines)
}
