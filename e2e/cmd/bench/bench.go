package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/core/proc"
	"github.com/procmig/migrate/e2e/cluster"
)

// bench is the cluster and what the runs share.
type bench struct {
	c *cluster.Cluster
	// work holds the workloads' binaries; images the offline images (on
	// tmpfs, as a fast disk would be at best).
	work, images string
	heapBin      string
	writerBin    string
	redisBin     string
}

// newBench builds the workloads and the cluster. Whatever fails, it
// leaves nothing behind.
func newBench(ctx context.Context) (b *bench, err error) {
	b = &bench{}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.work, err = os.MkdirTemp("", "migrate-bench-"); err != nil {
		return nil, err
	}
	if b.images, err = os.MkdirTemp("/dev/shm", "migrate-bench-images-"); err != nil {
		return nil, err
	}
	for _, w := range []struct {
		src string
		bin *string
	}{{"bench_heap.c", &b.heapBin}, {"bench_writer.c", &b.writerBin}} {
		*w.bin = filepath.Join(b.work, strings.TrimSuffix(w.src, ".c"))
		src := filepath.Join(*testdata, w.src)
		if out, err := exec.CommandContext(ctx, "gcc", "-O2", "-Wall", "-o", *w.bin, src).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("gcc %s (-testdata names the directory): %w\n%s", src, err, out)
		}
	}
	if b.redisBin, err = exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server is needed (apt-get install redis-server): %w", err)
	}
	// The services log in JSON, which liveRun reads the hooks' times from.
	opts := cluster.Options{Migrate: *migrateBin, ServeArgs: []string{"-v", "--log-format", "json"}}
	switch *hooks {
	case "auto":
	case "on", "shell":
		opts.Hooks = cluster.HooksOn
	case "address":
		opts.Hooks = cluster.HooksAddress
	case "off":
		opts.Hooks = cluster.HooksOff
	default:
		return nil, fmt.Errorf("-hooks %q: want auto, address, shell or off", *hooks)
	}
	if *verbose {
		opts.Log = os.Stderr
	}
	say("building a cluster: nodes A and B with migrate serve, a client node")
	if b.c, err = cluster.New(opts); err != nil {
		return nil, err
	}
	say("A %s, B %s, client %s, service address %s; the migration moves it: %v (in-process, --address: %v)", b.c.A.Addr, b.c.B.Addr, b.c.Client.Addr, b.c.VIP, b.c.Hooks, b.c.Address)
	return b, nil
}

// close tears everything down: the cluster (every process of its nodes),
// the images, the binaries. It keeps the services' logs in -logs.
func (b *bench) close() error {
	var errs []error
	if b.c != nil {
		if *logDir != "" {
			for _, n := range []*cluster.Node{b.c.A, b.c.B} {
				if data, err := os.ReadFile(n.ServeLog); err == nil {
					errs = append(errs, os.WriteFile(filepath.Join(*logDir, "serve-"+n.Name+".log"), data, 0o644))
				}
			}
		}
		say("cleaning up")
		errs = append(errs, b.c.Close())
	}
	for _, d := range []string{b.images, b.work} {
		if d != "" {
			errs = append(errs, os.RemoveAll(d))
		}
	}
	return errors.Join(errs...)
}

// runAll runs every scenario picked: -warmup + -runs pairs of runs each,
// the process starting on A and B in turn.
func (b *bench) runAll(ctx context.Context, picked []*scenario, rep *report) error {
	for _, sc := range picked {
		say("scenario %s: %s", sc.name, sc.describe())
		for i := 0; i < *warmup+*runs; i++ {
			from, to := b.c.A, b.c.B
			if i%2 == 1 {
				from, to = to, from
			}
			if err := b.vipTo(from); err != nil {
				return err
			}
			if *offline {
				r := b.offlineRun(ctx, sc, from, i)
				rep.add(r)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err := b.killAll(sc.comm); err != nil {
					return err
				}
				b.removeSysV()
			}
			r := b.liveRun(ctx, sc, from, to, i)
			rep.add(r)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := b.killAll(sc.comm); err != nil {
				return err
			}
			b.removeSysV()
		}
	}
	return nil
}

// removeSysV removes the System V segments that killed processes left on
// the agent nodes (PostgreSQL's, which its shutdown would remove): a
// segment left holds its ID, and the next run's segment could not have
// that ID on the other node. The nodes' IPC namespaces are the cluster's
// own.
func (b *bench) removeSysV() {
	for _, n := range []*cluster.Node{b.c.A, b.c.B} {
		if out, err := n.Command("ipcrm", "--all=shm").CombinedOutput(); err != nil {
			say("node %s: ipcrm --all=shm: %v: %s", n, err, out)
		}
	}
}

// vipTo puts the service address on node n (the runs' source) if it is
// elsewhere.
func (b *bench) vipTo(n *cluster.Node) error {
	holders, err := b.c.VIPHolders()
	if err != nil {
		return err
	}
	switch {
	case len(holders) == 1 && holders[0] == n:
		return nil
	case len(holders) == 0:
		other := b.c.A
		if n == other {
			other = b.c.B
		}
		return b.c.MoveVIP(other, n)
	case len(holders) == 1:
		return b.c.MoveVIP(holders[0], n)
	}
	return fmt.Errorf("the service address is on %v at once", holders)
}

// liveRun starts the scenario's workload on from and migrates it to to.
func (b *bench) liveRun(ctx context.Context, sc *scenario, from, to *cluster.Node, i int) *Run {
	r := &Run{Scenario: sc.name, Mode: "live", Index: i, Warmup: i < *warmup, From: from.Name, To: to.Name}
	defer r.log()
	w, err := sc.start(ctx, b, from)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer w.stop()
	if err := w.settle(ctx, r); err != nil {
		r.Error = err.Error()
		return r
	}
	// -v for the hooks' times (logged at info), in JSON to read them.
	extra := append([]string{"-v", "--log-format", "json"}, sc.flags...)
	if sc.tree {
		extra = append(extra, "--tree")
	}
	mctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	resetPeakRSS(to.ServePID)
	t0 := time.Now()
	res, err := b.c.Migrate(mctx, from, to, w.proc.NSPID, extra...)
	r.CommandMS = ms(time.Since(t0))
	cancel()
	r.TargetMaxRSSMiB = peakRSSMiB(to.ServePID)
	if res != nil {
		b.keepLog(r, res.Stderr)
		r.fromLive(res)
		r.SourceMaxRSSMiB = float64(res.MaxRSSKiB) / 1024
	}
	if err != nil {
		r.Error = err.Error()
		return r
	}
	if res.Outcome != "resumed" {
		r.Error = "outcome " + res.Outcome
		return r
	}
	r.HookPostDumpMS = hookMS(res.Stderr, "post-dump")
	if i := slices.IndexFunc(r.TargetSteps, func(s step) bool { return s.Name == "pre-resume hook" }); i >= 0 {
		r.HookPreResumeMS = r.TargetSteps[i].MS
	} else if data, err := os.ReadFile(to.ServeLog); err == nil {
		r.HookPreResumeMS = hookMS(string(data), "pre-resume")
	}
	if err := w.check(ctx, b, to, r); err != nil {
		r.Error = err.Error()
	}
	return r
}

// hookMS returns how long the last hook of stage took, from a JSON log
// of migrate (0 if there is none).
func hookMS(log, stage string) float64 {
	var out float64
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, `"msg":"hook"`) {
			continue
		}
		var e struct {
			Msg      string  `json:"msg"`
			Stage    string  `json:"stage"`
			Duration float64 `json:"duration"` // nanoseconds
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "hook" && e.Stage == stage {
			out = e.Duration / 1e6
		}
	}
	return out
}

// offlineRun starts the scenario's workload on n, dumps it (no pre-copy,
// image on tmpfs) and restores it there.
func (b *bench) offlineRun(ctx context.Context, sc *scenario, n *cluster.Node, i int) *Run {
	r := &Run{Scenario: sc.name, Mode: "offline", Index: i, Warmup: i < *warmup, From: n.Name, To: n.Name}
	defer r.log()
	w, err := sc.start(ctx, b, n)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer w.stop()
	if err := w.settle(ctx, r); err != nil {
		r.Error = err.Error()
		return r
	}
	rss, err := vmRSS(w.proc.PID)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.RSSBytes = rss
	dir := filepath.Join(b.images, fmt.Sprintf("%s-%d", sc.name, i))
	defer os.RemoveAll(dir)
	t0 := time.Now()
	var d dumpReport
	args := []string{"dump", "--dir", dir, "--json"}
	var tree []int // the processes dumped (as this machine sees them)
	if sc.tree {
		args = append(args, "--tree")
		ps, err := n.Find(sc.comm)
		if err != nil {
			r.Error = err.Error()
			return r
		}
		for _, p := range ps {
			tree = append(tree, p.PID)
		}
	}
	if err := b.migrate(ctx, n, r, &d, append(args, strconv.Itoa(w.proc.NSPID))...); err != nil {
		r.Error = err.Error()
		return r
	}
	// The dump killed the original; nsenter reaps it, freeing its PID.
	select {
	case <-w.proc.Done():
	case <-time.After(10 * time.Second):
		r.Error = "the dumped process is still there"
		return r
	}
	// Its children, orphans, are the service's to reap (zombies meanwhile,
	// which hold their PIDs and which Find does not list).
	for _, pid := range tree {
		if err := waitFor(ctx, 10*time.Second, "the dumped tree to be reaped", func() bool {
			_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
			return err != nil
		}); err != nil {
			r.Error = err.Error()
			return r
		}
	}
	var rr restoreReport
	if err := b.migrate(ctx, n, r, &rr, "restore", "--dir", dir, "--json"); err != nil {
		r.Error = err.Error()
		return r
	}
	r.CommandMS = ms(time.Since(t0))
	r.fromOffline(&d, &rr)
	if err := w.check(ctx, b, n, r); err != nil {
		r.Error = err.Error()
	}
	return r
}

// migrate runs `migrate ARGS...` on node n (-v too with -logs), decodes
// its stdout as JSON into out, and keeps its stderr with the run's logs.
// Cancelling ctx sends it SIGTERM (a dump then rolls back).
func (b *bench) migrate(ctx context.Context, n *cluster.Node, r *Run, out any, args ...string) error {
	if *logDir != "" {
		args = append([]string{args[0], "-v"}, args[1:]...)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := n.Command(b.c.MigrateBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("migrate %s: %w", args[0], err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		// migrate is nsenter's child; nsenter would leave it running.
		signalChildren(cmd.Process.Pid, unix.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			signalChildren(cmd.Process.Pid, unix.SIGKILL)
			err = <-done
		}
	}
	b.keepLog(r, stderr.String())
	if err != nil {
		return fmt.Errorf("migrate %s: %w: %s", args[0], err, cluster.LastLine(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		return fmt.Errorf("migrate %s: its report: %w", args[0], err)
	}
	return nil
}

// keepLog appends what migrate wrote on stderr to the run's log in -logs.
func (b *bench) keepLog(r *Run, text string) {
	if *logDir == "" || text == "" {
		return
	}
	name := filepath.Join(*logDir, fmt.Sprintf("%s-%d-%s.log", r.Scenario, r.Index, r.Mode))
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		say("keep log: %v", err)
		return
	}
	defer f.Close()
	io.WriteString(f, text)
}

// killAll kills every process named comm on A and B, and waits until
// they are gone (or zombies: their memory is free then).
func (b *bench) killAll(comm string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var left []cluster.ProcInfo
		for _, n := range []*cluster.Node{b.c.A, b.c.B} {
			ps, err := n.Find(comm)
			if err != nil {
				return err
			}
			for _, p := range ps {
				if p.State != 'Z' {
					left = append(left, p)
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still runs: %+v", comm, left)
		}
		for _, p := range left {
			unix.Kill(p.PID, unix.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// signalChildren sends sig to the children of pid.
func signalChildren(pid int, sig unix.Signal) {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(data)) {
		if kid, err := strconv.Atoi(f); err == nil {
			unix.Kill(kid, sig)
		}
	}
}

// vmRSS returns the resident set of pid (as this machine sees it).
func vmRSS(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
}

// waitFor calls cond every 10 ms until it returns true (nil), or maxWait
// has passed or ctx ended (an error naming what).
func waitFor(ctx context.Context, maxWait time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(maxWait)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %v", what, maxWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// resetPeakRSS resets the peak resident memory (VmHWM) of process pid, so
// that peakRSSMiB measures from now (clear_refs 5; best effort).
func resetPeakRSS(pid int) {
	if pid > 0 {
		os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
	}
}

// peakRSSMiB is the peak resident memory (VmHWM) of process pid in MiB, 0
// if it cannot be read.
func peakRSSMiB(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return 0
	}
	return float64(st.VmHWM) / (1 << 20)
}
