// Command bench measures live migration between the two agent nodes of a
// cluster on this machine (`make bench`; package e2e/cluster: network, PID,
// mount and IPC namespaces per node, `migrate serve` on nodes A and B, a
// client node, a service address moved by the migration hooks).
//
// Scenarios (-scenarios picks some, by name):
//
//   - idle: a process with 1 GiB of heap-like memory, idle
//     (testdata/bench_heap.c: page kinds in turn, 30% zero, 40%
//     repetitive text, 30% random);
//   - idle-big (only when -scenarios names it): the idle process with
//     -big-mib MiB (8 GiB), reporting the peak RSS of migrate --to and
//     of the target's migrate serve;
//   - write50, write200: the same memory, rewritten at random at 50 and
//     200 MB/s (testdata/bench_writer.c); write200-ac: the 200 MB/s
//     writer moved with --auto-converge; write200-pc: with --post-copy;
//   - redis: redis-server holding 1,000,000 keys (DEBUG POPULATE), under
//     a steady load from the client node through the service address
//     (package e2e/resp: one connection, a SET of a random key and a GET
//     of it every millisecond, each reply checked);
//   - postgres: PostgreSQL (initdb'd afresh), a tree of 7 processes
//     sharing a System V segment and shared anonymous memory, moved with
//     --tree, under a steady load from the client node through the
//     service address (package e2e/pgwire: one connection, an INSERT and
//     a SELECT count(*) every millisecond, the count checked).
//
// Each run starts a fresh process (filling 1 GiB takes about a second),
// on A for even runs and on B for odd ones, and migrates it to the other
// node with `migrate --to --json`; after the migration the copy is killed.
// Each run is paired with an offline one: the same workload, fresh, dumped
// with a plain `migrate dump --dir` (image on tmpfs) and restored with
// `migrate restore --dir` on its node, whose downtime is the dump's frozen
// time plus the restore's time. Live and offline runs alternate, so that
// both see the same machine. The first -warmup pairs are not counted.
//
// It prints, per scenario, the median and the spread (min-max) of the
// total time, the downtime (freeze to resumed, as the source measured it,
// and the target's own measure), the longest gap between two replies the
// client saw (redis), the bytes on the wire and their ratio to the RSS,
// the rounds and the throughput (wire bytes over total time), next to the
// targets the project aims at, and writes every run to -json.
//
// Ctrl-C stops it; it tears the cluster down on every exit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var (
	migrateBin = flag.String("migrate", "bin/migrate", "the migrate `binary`")
	runs       = flag.Int("runs", 5, "count `N` runs of each scenario")
	warmup     = flag.Int("warmup", 1, "runs before those, not counted")
	scenarios  = flag.String("scenarios", strings.Join(scenarioNames(true), ","), "the scenarios to run, comma-separated (also: "+strings.Join(optInNames(), ", ")+")")
	jsonOut    = flag.String("json", "bench.json", "write every run and the summary to `FILE`")
	testdata   = flag.String("testdata", "e2e/testdata", "the `DIR` of the C workloads")
	mib        = flag.Int("mib", 1024, "memory of the idle and writing processes, in `MiB`")
	bigMiB     = flag.Int("big-mib", 8192, "memory of the idle-big process, in `MiB`")
	keys       = flag.Int("keys", 1000000, "redis keys (DEBUG POPULATE)")
	conns      = flag.Int("conns", 1, "redis client connections, each with its own load")
	interval   = flag.Duration("interval", time.Millisecond, "the time between two requests of the redis client, per connection")
	offline    = flag.Bool("offline", true, "pair each live run with an offline dump and restore")
	hooks      = flag.String("hooks", "auto", "how the migration moves the service address: address (migrate --address, in-process), shell (--hook commands: ip, arping), auto (address if migrate has it, else shell), off (the harness moves it after the migration)")
	logDir     = flag.String("logs", "", "keep migrate's logs (-v) of every run and the services' logs in `DIR`")
	verbose    = flag.Bool("v", false, "print the commands the cluster runs")
)

func main() {
	flag.Parse()
	closeOnExec()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// closeOnExec marks every fd this process inherited above stderr
// close-on-exec: the workloads must get only the fds given to them (an
// inherited pipe is an fd migrate refuses, rightly).
func closeOnExec() {
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func run(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (namespaces, ptrace, clone3 with a chosen PID)")
	}
	if *runs < 1 || *warmup < 0 {
		return errors.New("-runs must be at least 1, -warmup at least 0")
	}
	var picked []*scenario
	for _, name := range strings.Split(*scenarios, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := slices.IndexFunc(allScenarios, func(s *scenario) bool { return s.name == name })
		if i < 0 {
			return fmt.Errorf("unknown scenario %q (known: %s)", name, strings.Join(scenarioNames(false), ", "))
		}
		picked = append(picked, allScenarios[i])
	}
	if len(picked) == 0 {
		return errors.New("no scenario picked")
	}
	if *logDir != "" {
		if err := os.MkdirAll(*logDir, 0o755); err != nil {
			return err
		}
	}

	b, err := newBench(ctx)
	if err != nil {
		return err
	}
	report := b.newReport(picked)
	start := time.Now()
	runErr := b.runAll(ctx, picked, report)
	report.finish(time.Since(start), ctx.Err() != nil)
	if err := b.close(); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("cleanup: %w", err))
	}
	report.print(os.Stdout)
	if err := report.write(*jsonOut); err != nil {
		runErr = errors.Join(runErr, err)
	} else {
		say("every run and the summary: %s", *jsonOut)
	}
	return runErr
}
