package source

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/procmig/migrate/core/ptrace"
	"github.com/procmig/migrate/internal/testutil"
)

// shellTree starts sh in the cgroup at dir (clone3 CLONE_INTO_CGROUP: its
// children are born there) with n children running script, and waits
// until the n are there.
func shellTree(b testing.TB, dir string, n int, script string) int {
	b.Helper()
	cg, err := os.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command("sh", "-c", fmt.Sprintf("for i in $(seq %d); do (%s) & done; wait", n, script))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	pid := cmd.Process.Pid
	b.Cleanup(func() {
		syscall.Kill(-pid, syscall.SIGKILL) // its process group: sh and its children
		cmd.Wait()
		// Its children die (SIGKILL to the group) or are orphaned,
		// and come to this test, a subreaper: reaped once zombies.
		testutil.WaitFor(b, short, "the tree's processes to be reaped", func() bool {
			zombies := false
			for _, k := range testutil.Children() {
				if st, _ := testutil.State(k); st == 'Z' {
					var ws syscall.WaitStatus
					syscall.Wait4(k, &ws, syscall.WNOHANG, nil)
					zombies = true
				}
			}
			procs, _ := os.ReadFile(dir + "/cgroup.procs")
			return !zombies && strings.TrimSpace(string(procs)) == ""
		})
	})
	testutil.WaitFor(b, short, "the tree's children", func() bool {
		kids, err := childrenOf(pid)
		return err == nil && len(kids) == n
	})
	return pid
}

// BenchmarkFreezeTree measures the freeze of a tree alone in its cgroup
// (freezeTree: every thread seized and interrupted, with the cgroup
// freezer first or not), for a tree of idle processes and one of
// processes that spin (sh and 1 or 15 children), on this machine's CPUs. The
// report gives the median and the worst of the freezes as ms/median and
// ms/max.
//
//	go test ./source -run XXX -bench FreezeTree -benchtime 50x
func BenchmarkFreezeTree(b *testing.B) {
	testutil.RequireRoot(b)
	for _, load := range []struct {
		name, script string
		n            int
	}{
		{"idle-2", "sleep 1000", 1},
		{"idle-16", "sleep 1000", 15},
		{"busy-16", "while :; do :; done", 15},
	} {
		b.Run(load.name, func(b *testing.B) {
			dir, _ := testutil.FreezerCgroup(b, "bench-"+load.name)
			root := shellTree(b, dir, load.n, load.script)
			for _, mode := range []FreezeMode{FreezePtrace, FreezeCgroup} {
				b.Run(string(mode), func(b *testing.B) {
					var took []time.Duration
					for b.Loop() {
						ss := &session{opts: DumpOptions{PID: root, Tree: true, Freeze: mode}, log: slog.New(slog.DiscardHandler), tr: ptrace.NewTracer()}
						if err := ss.prepareFreezer(root); err != nil {
							b.Fatal(err)
						}
						all := []*dumper{{session: ss, pid: root}}
						_, err := freezeTree(context.Background(), ss, &all, nil)
						ss.freezer.close()
						if err != nil {
							b.Fatal(err)
						}
						if want := map[FreezeMode]string{FreezePtrace: "ptrace", FreezeCgroup: "cgroup"}[mode]; ss.froze != want {
							b.Fatalf("stopped by %s, want %s", ss.froze, want)
						}
						took = append(took, ss.freezeTime)
						for _, d := range all {
							d.p.Detach()
						}
						ss.closeTracers()
					}
					sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
					b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms/median")
					b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "ms/max")
				})
			}
		})
	}
}
