package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// BenchmarkCheckpoint dumps and restores a process with 1 GiB of touched,
// heap-like memory, images on tmpfs, and prints a table with the median and
// spread of 5 runs after one warm-up run (fresh memory is slow to touch the
// first time on these VMs). Run it with `make bench-go`.
func BenchmarkCheckpoint(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (ptrace, clone3 set_tid)")
	}
	const mib = 1024
	bin := buildBench(b)
	// Restored processes become our children, so we can reap them.
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	// Fds the test binary inherited (from a CI runner, say) would leak into
	// the workload and make its dump refuse them.
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	tmp, err := os.MkdirTemp("/dev/shm", "migrate-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	type run struct {
		dump, frozen, dumpMem, restore, restoreMem float64
		image                                      int64
		dumpSteps                                  []source.Step
		restoreSteps                               []target.Step
	}
	var runs []run
	for i := 0; i < 6; i++ {
		dir := filepath.Join(tmp, fmt.Sprint("img", i))
		// stdout on a file: a pipe to us would have an end outside the
		// process, which a dump refuses.
		logPath := filepath.Join(tmp, "log")
		log, err := os.Create(logPath)
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(bin, fmt.Sprint(mib))
		cmd.Stdout = log
		err = cmd.Start()
		log.Close()
		if err != nil {
			b.Fatal(err)
		}
		for {
			out, _ := os.ReadFile(logPath)
			if strings.Contains(string(out), "ready") {
				break
			}
			var ws unix.WaitStatus
			if p, _ := unix.Wait4(cmd.Process.Pid, &ws, unix.WNOHANG, nil); p != 0 {
				b.Fatalf("workload exited: %v", ws)
			}
			time.Sleep(20 * time.Millisecond)
		}
		pid := cmd.Process.Pid
		drep, err := source.Dump(context.Background(), source.DumpOptions{PID: pid, Dir: dir})
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			b.Fatal(err)
		}
		cmd.Wait()
		rrep, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		unix.Kill(pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
		os.RemoveAll(dir)
		if i == 0 {
			continue // warm-up
		}
		runs = append(runs, run{drep.TotalMS, drep.FrozenMS, drep.MemoryMS, rrep.TotalMS, rrep.MemoryMS, drep.BytesImage, drep.Steps, rrep.Steps})
	}
	col := func(f func(run) float64) (med, lo, hi float64) {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		return v[len(v)/2], v[0], v[len(v)-1]
	}
	fmt.Printf("\ncheckpoint/restore of a process with %d MiB of touched heap-like memory, image on tmpfs, %d runs (+1 warm-up)\n", mib, len(runs))
	fmt.Printf("%-28s %10s %10s %10s\n", "", "median", "min", "max")
	row := func(name string, f func(run) float64) {
		m, lo, hi := col(f)
		fmt.Printf("%-28s %8.1fms %8.1fms %8.1fms\n", name, m, lo, hi)
	}
	row("dump total", func(r run) float64 { return r.dump })
	row("  frozen", func(r run) float64 { return r.frozen })
	for i, s := range runs[0].dumpSteps {
		row("    "+s.Name, func(r run) float64 { return r.dumpSteps[i].MS })
	}
	row("restore total", func(r run) float64 { return r.restore })
	for i, s := range runs[0].restoreSteps {
		row("    "+s.Name, func(r run) float64 { return r.restoreSteps[i].MS })
	}
	m, _, _ := col(func(r run) float64 { return float64(r.image) })
	dm, _, _ := col(func(r run) float64 { return r.dump })
	rm, _, _ := col(func(r run) float64 { return r.restore })
	fmt.Printf("image size %.0f MiB (%.0f%% of %d MiB); dump %.2f GiB/s, restore %.2f GiB/s\n",
		m/(1<<20), 100*m/(mib<<20), mib, float64(mib)/1024/(dm/1000), float64(mib)/1024/(rm/1000))
	b.ReportMetric(dm, "dump-ms")
	b.ReportMetric(rm, "restore-ms")
	b.ReportMetric(m/(1<<20), "image-MiB")
}

func buildBench(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "bench_heap")
	out, err := exec.Command("gcc", "-O2", "-o", bin, "testdata/bench_heap.c").CombinedOutput()
	if err != nil {
		b.Skipf("gcc is needed to build the workload: %v\n%s", err, out)
	}
	return bin
}
