package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
	"github.com/procmig/migrate/transport"
)

// BenchmarkLiveMigration measures live migration of a process with 1 GiB
// of touched memory over loopback into `migrate serve` in a PID namespace
// of its own (a fresh one for each run), once idle (bench_heap) and once
// rewriting 50 MB/s of it (dirty), next to a plain dump and restore of the
// same workload through files on tmpfs. Each of the four is run once to warm up, then 5 times,
// alternating live and files; the table gives the median (min-max) of:
//
//   - total: Migrate from start to return; for files, dump + restore.
//   - downtime: live, freeze to resumed as the source measures it; for
//     files, the dump's frozen time + the restore (the process runs
//     nowhere in between; moving the image to another host would add to it).
//   - MiB: bytes on the wire; for files, the image.
//   - /RSS: those bytes over the process's RSS when it started.
//
// At most two 1 GiB processes exist at once: the original and the copy
// being built during a migration, the workload and its image in tmpfs
// during a dump, the image and the restored process during a restore.
// Run it with
//
//	go test -run '^$' -bench LiveMigration -benchtime 1x ./e2e
func BenchmarkLiveMigration(b *testing.B) {
	testutil.RequireRoot(b)
	const mib, rate, runs = 1024, 50, 5
	heap := buildBench(b)
	loadBefore := loadAvg()
	tmp, err := os.MkdirTemp("/dev/shm", "migrate-bench-live-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	type result struct {
		total, downtime float64 // ms
		frozen, restore float64 // ms, files only
		bytes, rss      float64 // bytes
		rounds          float64
	}
	scenarios := []struct {
		name  string
		start func() *testutil.Proc
	}{
		{"idle", func() *testutil.Proc {
			p := testutil.Start(b, heap, fmt.Sprint(mib))
			p.WaitLine(b, long, 0, "ready")
			return p
		}},
		{fmt.Sprintf("%d MB/s", rate), func() *testutil.Proc { return startDirty(b, mib, rate) }},
	}

	type column struct {
		name string
		rs   []result
	}
	var cols []column
	for _, sc := range scenarios {
		// liveRun migrates a fresh workload into a fresh service, then
		// kills the migrated copy and the service.
		liveRun := func() result {
			srv := startBenchServe(b)
			defer srv.stop(b)
			p := sc.start()
			rep, err := source.Migrate(context.Background(), source.MigrateOptions{
				PID: p.PID, To: srv.addr, Transport: transport.Config{Insecure: true},
			})
			if err != nil {
				p.Stop(b)
				srv.fail(b, "migrate %s: %v", sc.name, err)
			}
			if rep.Outcome != "resumed" {
				srv.fail(b, "migrate %s: outcome %q", sc.name, rep.Outcome)
			}
			// The original is dead (killed at the commit): reap it.
			if ws := p.WaitExit(b, short); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
				b.Fatalf("the original ended with %v, want killed", ws)
			}
			srv.kill(b, p.PID)
			return result{
				total: rep.TotalMS, downtime: rep.DowntimeMS,
				bytes: float64(rep.BytesWire), rss: float64(rep.RSSBytes), rounds: float64(len(rep.Rounds)),
			}
		}
		filesRun := func(i int) result {
			p := sc.start()
			rss := statusKB(b, p.PID, "VmRSS") * 1024
			dir := filepath.Join(tmp, fmt.Sprint("img", i))
			drep, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir})
			if err != nil {
				p.Stop(b)
				b.Fatalf("dump %s: %v", sc.name, err)
			}
			p.Reap(b) // the PID must be free for the restore
			rrep, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir})
			if err != nil {
				b.Fatalf("restore %s: %v", sc.name, err)
			}
			// Restored as a child of the test process (its subreaper).
			testutil.Adopt(b, rrep.PID, p.Log).Kill(b)
			os.RemoveAll(dir)
			return result{
				total: drep.TotalMS + rrep.TotalMS, downtime: drep.FrozenMS + rrep.TotalMS,
				frozen: drep.FrozenMS, restore: rrep.TotalMS,
				bytes: float64(drep.BytesImage), rss: rss, rounds: float64(len(drep.Rounds)),
			}
		}
		lc := column{name: sc.name + " live"}
		fc := column{name: sc.name + " files"}
		for i := 0; i <= runs; i++ {
			l, f := liveRun(), filesRun(i)
			if i == 0 {
				continue // warm-up
			}
			lc.rs = append(lc.rs, l)
			fc.rs = append(fc.rs, f)
		}
		cols = append(cols, lc, fc)
	}

	stat := func(rs []result, f func(result) float64) (med, lo, hi float64) {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2], v[0], v[len(v)-1]
	}
	fmt.Printf("\n%d MiB process (idle: bench_heap; %d MB/s: dirty), live migration over loopback vs dump+restore through files on tmpfs;\n", mib, rate)
	fmt.Printf("default codec and policy, median (min-max) of %d runs after 1 warm-up\n", runs)
	fmt.Printf("%-18s", "")
	for _, c := range cols {
		fmt.Printf(" %24s", c.name)
	}
	fmt.Println()
	// row prints a line for every column, or (filesOnly) only for the
	// files ones.
	row := func(name, format string, filesOnly bool, f func(result) float64) {
		fmt.Printf("%-18s", name)
		for _, c := range cols {
			cell := "-"
			if !filesOnly || strings.HasSuffix(c.name, " files") {
				m, lo, hi := stat(c.rs, f)
				cell = fmt.Sprintf(format+" ("+format+"-"+format+")", m, lo, hi)
			}
			fmt.Printf(" %24s", cell)
		}
		fmt.Println()
	}
	const mb = 1 << 20
	row("total ms", "%.0f", false, func(r result) float64 { return r.total })
	row("downtime ms", "%.1f", false, func(r result) float64 { return r.downtime })
	row("  dump frozen ms", "%.0f", true, func(r result) float64 { return r.frozen })
	row("  restore ms", "%.0f", true, func(r result) float64 { return r.restore })
	row("wire/image MiB", "%.0f", false, func(r result) float64 { return r.bytes / mb })
	row("  /RSS", "%.2f", false, func(r result) float64 { return r.bytes / r.rss })
	row("rounds", "%.0f", false, func(r result) float64 { return r.rounds })
	fmt.Println("files: total = dump + restore, downtime = dump frozen + restore, MiB = image; live: downtime = freeze to resumed (source), MiB = bytes on the wire")
	fmt.Printf("load average before: %s, after: %s\n", loadBefore, loadAvg())

	for i, c := range cols {
		unit := []string{"idle-live-", "idle-files-", "dirty-live-", "dirty-files-"}[i]
		med := func(f func(result) float64) float64 { m, _, _ := stat(c.rs, f); return m }
		b.ReportMetric(med(func(r result) float64 { return r.total }), unit+"total-ms")
		b.ReportMetric(med(func(r result) float64 { return r.downtime }), unit+"downtime-ms")
		b.ReportMetric(med(func(r result) float64 { return r.bytes / mb }), unit+"MiB")
		if strings.HasSuffix(c.name, " live") {
			b.ReportMetric(med(func(r result) float64 { return r.rounds }), unit+"rounds")
			b.ReportMetric(med(func(r result) float64 { return r.bytes / r.rss }), unit+"wire/RSS")
		} else {
			b.ReportMetric(med(func(r result) float64 { return r.frozen }), unit+"frozen-ms")
			b.ReportMetric(med(func(r result) float64 { return r.restore }), unit+"restore-ms")
		}
	}
}

// benchServe is `migrate serve` as PID 1 of a PID namespace of its own, as
// startServe runs it, for benchmarks: it also knows the service's PID and
// namespace, to find and kill the processes migrated into it.
type benchServe struct {
	addr string
	cmd  *exec.Cmd // unshare
	pid  int       // the service, as this namespace sees it
	ns   string    // its PID namespace (the /proc/PID/ns/pid link)
	log  string
	done bool
}

func startBenchServe(t testing.TB) *benchServe {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		testutil.Unavailable(t, "unshare (util-linux) is needed for a PID namespace: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &benchServe{addr: l.Addr().String(), log: filepath.Join(t.TempDir(), "serve.log")}
	l.Close()
	s.cmd = exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount-proc", buildMigrate(t), "serve", "--listen", s.addr, "--insecure", "-v")
	log, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	s.cmd.Stderr = log
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.stop(t) })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "listening on ") {
		s.fail(t, "serve said %q, %v", line, err)
	}
	u := s.cmd.Process.Pid
	kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", u, u))
	if f := strings.Fields(string(kids)); len(f) != 1 {
		s.fail(t, "unshare %d has children %q, want the service alone", u, kids)
	} else if _, err := fmt.Sscan(f[0], &s.pid); err != nil {
		s.fail(t, "children of unshare: %q", kids)
	}
	if s.ns, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", s.pid)); err != nil {
		s.fail(t, "the service's PID namespace: %v", err)
	}
	return s
}

// fail stops the benchmark with the service's log.
func (s *benchServe) fail(t testing.TB, format string, args ...any) {
	t.Helper()
	b, _ := os.ReadFile(s.log)
	t.Fatalf(format+"\nserve log:\n%s", append(args, b)...)
}

// find returns the PID, as this namespace sees it, of the process that is
// pid in the service's namespace.
func (s *benchServe) find(t testing.TB, pid int) int {
	t.Helper()
	var found int
	testutil.WaitFor(t, short, fmt.Sprintf("a process that is %d in the service's namespace", pid), func() bool {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			var outer int
			if _, err := fmt.Sscan(e.Name(), &outer); err != nil {
				continue
			}
			if ns, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err != nil || ns != s.ns {
				continue
			}
			b, err := os.ReadFile("/proc/" + e.Name() + "/status")
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if f, ok := strings.CutPrefix(l, "NSpid:"); ok {
					ids := strings.Fields(f)
					if len(ids) == 2 && ids[1] == fmt.Sprint(pid) {
						found = outer
						return true
					}
				}
			}
		}
		return false
	})
	return found
}

// kill kills the process that is pid in the service's namespace, by its
// PID here, and waits until it is dead: its memory is free then. Its
// parent, the service, does not reap it (target.reapOrphans reads si_pid
// at offset 12 of the siginfo; it is at 16 on 64-bit Linux), so the
// zombie would keep its PID in the namespace: stop the service, which
// ends the namespace and reaps it.
func (s *benchServe) kill(t testing.TB, pid int) {
	t.Helper()
	outer := s.find(t, pid)
	if err := unix.Kill(outer, unix.SIGKILL); err != nil {
		t.Fatalf("kill the migrated process (%d, %d in the namespace): %v", outer, pid, err)
	}
	testutil.WaitFor(t, short, fmt.Sprintf("the migrated process %d to die", outer), func() bool {
		st, err := testutil.State(outer)
		return err != nil || st == 'Z'
	})
}

// stop kills the service, which ends its namespace and everything in it,
// and reaps it. It may be called more than once.
func (s *benchServe) stop(t testing.TB) {
	if s.done {
		return
	}
	s.done = true
	if s.pid == 0 {
		u := s.cmd.Process.Pid
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", u, u))
		fmt.Sscan(string(kids), &s.pid)
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	if s.pid != 0 {
		// --kill-child kills the service with unshare; orphaned, it
		// becomes ours (the subreaper) to reap.
		testutil.ReapOrphan(t, s.pid)
	}
}

// loadAvg returns the 1, 5 and 15 minute load averages of /proc/loadavg
// (the machines are shared: the figures depend on it).
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
