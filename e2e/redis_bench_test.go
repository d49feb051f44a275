package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
	"github.com/procmig/migrate/target"
)

// BenchmarkRedisCheckpoint dumps and restores redis-server holding
// 1,000,000 keys (DEBUG POPULATE), image on tmpfs, and prints the median,
// min and max of 5 runs after one warm-up run, each with a fresh redis:
// dump total and frozen time, restore total, image size, and redis's RSS
// before the dump and after restore; once with a plain dump (frozen from
// the start) and once with pre-copy (memory copied while redis runs, then
// a short frozen round). Each restored redis must answer with the same
// DBSIZE and DEBUG DIGEST. Run it with
//
//	go test -run '^$' -bench RedisCheckpoint -benchtime 1x ./e2e/
func BenchmarkRedisCheckpoint(b *testing.B) {
	testutil.RequireRoot(b)
	redisServer(b)
	const keys = 1000000
	tmp, err := os.MkdirTemp("/dev/shm", "migrate-bench-redis-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	type run struct {
		dump, frozen, dumpMem, restore, restoreMem float64
		image, raw                                 float64 // MiB
		rss, rssAfter                              float64 // MiB
		rounds                                     float64
	}
	one := func(i int, preCopy bool) run {
		work := b.TempDir()
		port := freeTCPPort(b)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p := startRedis(b, port, work)
		c, err := dialRedis(addr)
		if err != nil {
			b.Fatal(err)
		}
		c.do(b, "DEBUG", "POPULATE", fmt.Sprint(keys))
		want := readRedisState(b, c, nil)
		if want.dbsize != keys {
			b.Fatalf("DBSIZE %d after DEBUG POPULATE %d", want.dbsize, keys)
		}
		c.Close()
		waitSockets(b, p.PID, 1)
		rss := statusKB(b, p.PID, "VmRSS")

		dir := filepath.Join(tmp, fmt.Sprint("img", i))
		drep, err := source.Dump(context.Background(), source.DumpOptions{PID: p.PID, Dir: dir, PreCopy: preCopy, Tracker: source.TrackerAuto})
		if err != nil {
			b.Fatalf("dump (pre-copy %v): %v", preCopy, err)
		}
		p.Reap(b)
		rrep, err := target.Restore(context.Background(), target.RestoreOptions{Dir: dir})
		if err != nil {
			b.Fatalf("restore: %v", err)
		}
		r := testutil.Adopt(b, p.PID, p.Log)
		c, err = dialRedis(addr)
		if err != nil {
			b.Fatalf("connect to the restored redis: %v", err)
		}
		if got := readRedisState(b, c, nil); got != want {
			b.Fatalf("restored redis: %s, before the dump %s", got, want)
		}
		c.Close()
		rssAfter := statusKB(b, r.PID, "VmRSS")
		r.Kill(b)
		os.RemoveAll(dir)
		return run{drep.TotalMS, drep.FrozenMS, drep.MemoryMS, rrep.TotalMS, rrep.MemoryMS,
			float64(drep.BytesImage) / (1 << 20), float64(drep.BytesRaw) / (1 << 20), rss / 1024, rssAfter / 1024,
			float64(len(drep.Rounds))}
	}
	for _, preCopy := range []bool{false, true} {
		var runs []run
		for i := range 6 {
			r := one(i, preCopy)
			if i > 0 { // the first is a warm-up
				runs = append(runs, r)
			}
		}
		col := func(f func(run) float64) (med, lo, hi float64) {
			v := make([]float64, len(runs))
			for i, r := range runs {
				v[i] = f(r)
			}
			sort.Float64s(v)
			return v[len(v)/2], v[0], v[len(v)-1]
		}
		mode := "plain dump (frozen throughout)"
		if preCopy {
			mode = "pre-copy dump"
		}
		fmt.Printf("\nredis-server with %d keys (DEBUG POPULATE), %s, image on tmpfs, default codec, %d runs (+1 warm-up)\n", keys, mode, len(runs))
		fmt.Printf("%-26s %10s %10s %10s\n", "", "median", "min", "max")
		row := func(name, unit string, f func(run) float64) {
			m, lo, hi := col(f)
			fmt.Printf("%-26s %8.1f%-2s %8.1f%-2s %8.1f%-2s\n", name, m, unit, lo, unit, hi, unit)
		}
		row("dump total", "ms", func(r run) float64 { return r.dump })
		row("  frozen", "ms", func(r run) float64 { return r.frozen })
		row("  memory", "ms", func(r run) float64 { return r.dumpMem })
		if preCopy {
			row("  rounds", "", func(r run) float64 { return r.rounds })
		}
		row("restore total", "ms", func(r run) float64 { return r.restore })
		row("  memory", "ms", func(r run) float64 { return r.restoreMem })
		row("image size", "Mi", func(r run) float64 { return r.image })
		row("  pages raw", "Mi", func(r run) float64 { return r.raw })
		row("RSS of redis at dump", "Mi", func(r run) float64 { return r.rss })
		row("RSS after restore", "Mi", func(r run) float64 { return r.rssAfter })
		dm, _, _ := col(func(r run) float64 { return r.dump })
		fm, _, _ := col(func(r run) float64 { return r.frozen })
		rm, _, _ := col(func(r run) float64 { return r.restore })
		im, _, _ := col(func(r run) float64 { return r.image })
		unit := ""
		if preCopy {
			unit = "precopy-"
		}
		b.ReportMetric(dm, unit+"dump-ms")
		b.ReportMetric(fm, unit+"frozen-ms")
		b.ReportMetric(rm, unit+"restore-ms")
		b.ReportMetric(im, unit+"image-MiB")
	}
}

// statusKB reads a "NNN kB" field of /proc/PID/status.
func statusKB(t testing.TB, pid int, name string) float64 {
	t.Helper()
	v := testutil.StatusField(t, pid, name)
	n, err := strconv.ParseFloat(strings.TrimSuffix(v, " kB"), 64)
	if err != nil {
		t.Fatalf("%s: %q", name, v)
	}
	return n
}

// freeTCPPort returns a port free on 127.0.0.1 (freeSocketPort, for
// benchmarks too).
func freeTCPPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
