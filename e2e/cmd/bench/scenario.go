package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/e2e/resp"
)

// scenario is a workload to migrate, and the targets its figures have.
type scenario struct {
	name string
	// comm is the workload's process name (to find and kill it).
	comm string
	// start starts a fresh workload on node n and returns once it is in
	// its steady state.
	start func(ctx context.Context, b *bench, n *cluster.Node) (*workload, error)
	// tree: the workload is a process tree, moved and dumped whole
	// (--tree).
	tree bool
	// targets apply to the live runs.
	targets []target
	// flags are added to the live migration's command line.
	flags []string
	// optIn: not in the default run (-scenarios names it).
	optIn bool
	// client: a client on the client node loads it (its gap and errors
	// are figures).
	client bool
}

// target is a figure the project aims at: the median of metric (the
// maximum, for worst) at most max.
type target struct {
	metric string
	max    float64
	worst  bool
}

var allScenarios = []*scenario{
	{
		name:    "idle",
		comm:    "bench_heap",
		start:   startHeap,
		targets: []target{{metric: "downtime_ms", max: 20}, {metric: "wire_rss", max: 0.4}},
	},
	{
		// A big process: migrate's own memory must not grow with it,
		// and the downtime should be the idle one's.
		name:    "idle-big",
		comm:    "bench_heap",
		start:   startHeapOf(func() int { return *bigMiB }),
		targets: []target{{metric: "source_max_rss_mib", max: 128}, {metric: "target_max_rss_mib", max: 128}},
		optIn:   true,
	},
	{
		name:    "write50",
		comm:    "bench_writer",
		start:   startWriter(50),
		targets: []target{{metric: "downtime_ms", max: 50}},
	},
	{
		name:  "write200",
		comm:  "bench_writer",
		start: startWriter(200),
	},
	{
		// The same writer, slowed down by auto-converge once pre-copy
		// stops converging.
		name:  "write200-ac",
		comm:  "bench_writer",
		start: startWriter(200),
		flags: []string{"--auto-converge"},
	},
	{
		// The same writer, moved with --post-copy: it runs on the
		// target after a first round without its heap, which follows.
		name:    "write200-pc",
		comm:    "bench_writer",
		start:   startWriter(200),
		flags:   []string{"--post-copy"},
		targets: []target{{metric: "downtime_ms", max: 20}},
	},
	{
		name:   "redis",
		comm:   "redis-server",
		start:  startRedis(0),
		client: true,
		targets: []target{
			{metric: "downtime_ms", max: 30},
			{metric: "client_gap_ms", max: 50},
			{metric: "client_errors", max: 0, worst: true},
		},
	},
	{
		// Many connections: the downtime should grow slowly with them
		// (at most twice redis's with one).
		name:   "redis200",
		comm:   "redis-server",
		start:  startRedis(redis200Conns),
		client: true,
		targets: []target{
			{metric: "downtime_ms", max: 60},
			{metric: "client_errors", max: 0, worst: true},
		},
	},
	{
		// A tree: the postmaster, its auxiliary processes and a backend
		// per connection, sharing a System V segment and shared
		// anonymous memory.
		name:   "postgres",
		comm:   "postgres",
		start:  startPostgres,
		tree:   true,
		client: true,
		targets: []target{
			{metric: "client_errors", max: 0, worst: true},
		},
	},
	{
		// A small tree: nginx's master and its 2 workers (as
		// www-data), a keep-alive client connection held by a worker.
		name:   "nginx",
		comm:   "nginx",
		start:  startNginx,
		tree:   true,
		client: true,
		targets: []target{
			{metric: "client_errors", max: 0, worst: true},
		},
	},
	{
		// The same nginx as one process (master_process off), with the
		// same client and the tree's resident memory (15 MiB, see
		// nginx1Connections): what the tree costs next to one process
		// doing the same work (the report sets the tree next to idle
		// too).
		name:   "nginx1",
		comm:   "nginx",
		start:  startNginxSingle,
		client: true,
		targets: []target{
			{metric: "client_errors", max: 0, worst: true},
		},
	},
}

// redis200Conns is the redis200 scenario's connections; each sends at
// 1/redis200Conns of redis's rate (-interval), the same load in all.
const redis200Conns = 200

// describe says what the scenario runs, with the flags' values.
func (sc *scenario) describe() string {
	switch sc.name {
	case "idle":
		return fmt.Sprintf("%d MiB idle process, heap-like memory (bench_heap: 30%% zero, 40%% text, 30%% random pages)", *mib)
	case "write50", "write200":
		return fmt.Sprintf("%d MiB heap-like process rewriting random pages at %s MB/s (bench_writer)", *mib, sc.name[len("write"):])
	case "idle-big":
		return fmt.Sprintf("%d MiB idle process, heap-like memory (bench_heap), with both sides' peak RSS (-big-mib)", *bigMiB)
	case "write200-ac":
		return fmt.Sprintf("%d MiB heap-like process rewriting random pages at 200 MB/s (bench_writer), moved with --auto-converge", *mib)
	case "write200-pc":
		return fmt.Sprintf("%d MiB heap-like process rewriting random pages at 200 MB/s (bench_writer), moved with --post-copy", *mib)
	case "redis":
		return fmt.Sprintf("redis-server with %d keys (DEBUG POPULATE); client on the client node through the service address, %d connection(s), a SET and a GET of a random key every %v on each", *keys, *conns, *interval)
	case "postgres":
		return fmt.Sprintf("PostgreSQL (initdb'd afresh, fsync off), moved as a tree; client on the client node through the service address, %d connection(s), an INSERT and a SELECT count(*) every %v on each", *conns, *interval)
	case "nginx":
		return fmt.Sprintf("nginx (a master, 2 workers as www-data), moved as a tree; client on the client node through the service address, %d keep-alive connection(s), a GET of a %d KB file every %v on each", *conns, len(nginxBody)/1000, *interval)
	case "nginx1":
		return fmt.Sprintf("the same nginx as one process (master_process off, as root), no workers, %d worker_connections for the tree's resident memory; the same client: %d keep-alive connection(s), a GET of a %d KB file every %v on each", nginx1Connections, *conns, len(nginxBody)/1000, *interval)
	case "redis200":
		return fmt.Sprintf("redis-server with %d keys (DEBUG POPULATE); client on the client node through the service address, %d connections, a SET and a GET of a random key every %v on each (redis's load spread over them)", *keys, redis200Conns, *interval*redis200Conns)
	}
	return sc.name
}

// scenarioNames are the names of the scenarios: all of them, or with
// defaults only those a run without -scenarios takes.
func scenarioNames(defaults bool) []string {
	var out []string
	for _, sc := range allScenarios {
		if !defaults || !sc.optIn {
			out = append(out, sc.name)
		}
	}
	return out
}

// workload is a running workload.
type workload struct {
	proc *cluster.Proc
	comm string
	// For redis and postgres: the load on it, the address it uses, and
	// how to stop it.
	load     clientLoad
	addr     string
	stopLoad func()
	// verify, if set, checks the data after the move (else redis's
	// DBSIZE is checked).
	verify func(ctx context.Context) error
	// cleanup, if set, runs once the process is stopped.
	cleanup func()
	// settleFor is how long to let it run before it is moved.
	settleFor time.Duration
	// progress, if set, is a file the workload keeps writing to while
	// it runs.
	progress string
}

// stop stops the client load, if any, and the process if it still runs
// where it was started.
func (w *workload) stop() {
	if w.stopLoad != nil {
		w.stopLoad()
	}
	w.proc.Stop()
	if w.cleanup != nil {
		w.cleanup()
	}
}

// clientLoad is a client's steady load on the workload (resp.Load,
// pgLoad).
type clientLoad interface {
	Window() resp.Stats
	Total() resp.Stats
	WaitRequests(ctx context.Context, n int, maxWait time.Duration) error
}

// settle lets the workload run a while before it is moved; with a client
// load, it records the longest gap the client saw meanwhile.
func (w *workload) settle(ctx context.Context, r *Run) error {
	if err := sleep(ctx, w.settleFor); err != nil {
		return err
	}
	if w.load != nil {
		st := w.load.Window()
		r.Client = true
		r.ClientBaselineGapMS = ms(st.MaxGap)
		r.ClientErrors = st.Errors
		r.ClientRequests = st.Requests
	}
	return nil
}

// check checks that the workload runs on node n, once: with a client,
// that the client goes on (then records what it saw since settle, and
// checks the keys are all there); for a writer, that it writes on.
func (w *workload) check(ctx context.Context, b *bench, n *cluster.Node, r *Run) error {
	comm, nspid := w.comm, w.proc.NSPID
	var locs []cluster.Located
	err := waitFor(ctx, 10*time.Second, fmt.Sprintf("one %s with pid %d, on node %s", comm, nspid, n), func() bool {
		var err error
		locs, err = b.c.Locate(comm, nspid)
		return err == nil && len(locs) == 1 && locs[0].Node == n && locs[0].State != 'T' && locs[0].State != 't'
	})
	if err != nil {
		return fmt.Errorf("%w (found %+v)", err, locs)
	}
	if w.progress != "" {
		size := fileSize(w.progress)
		if err := waitFor(ctx, 5*time.Second, "the writer writes on after the move", func() bool {
			return fileSize(w.progress) > size
		}); err != nil {
			return err
		}
	}
	if w.load == nil {
		return nil
	}
	// Enough requests after the move that the gap it caused has ended.
	if err := w.load.WaitRequests(ctx, w.load.Total().Requests+500, 30*time.Second); err != nil {
		return err
	}
	st := w.load.Window()
	r.ClientGapMS = ms(st.MaxGap)
	r.ClientErrors += st.Errors
	r.ClientRequests += st.Requests
	if st.LastErr != nil {
		r.ClientLastError = st.LastErr.Error()
	}
	if w.verify != nil {
		return w.verify(ctx)
	}
	admin, err := dialRedis(ctx, b.c.Client, w.addr)
	if err != nil {
		return err
	}
	defer admin.Close()
	if got, err := admin.Int("DBSIZE"); err != nil {
		return err
	} else if got != int64(*keys) {
		return fmt.Errorf("DBSIZE %d after the move, want %d", got, *keys)
	}
	return nil
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return st.Size()
}

// waitReady waits until the workload's log holds "ready".
func waitReady(ctx context.Context, p *cluster.Proc) error {
	return waitFor(ctx, 2*time.Minute, "the workload to say ready", func() bool {
		select {
		case <-p.Done():
			return true
		default:
		}
		data, _ := os.ReadFile(p.Log)
		return bytes.Contains(data, []byte("ready"))
	})
}

func startHeap(ctx context.Context, b *bench, n *cluster.Node) (*workload, error) {
	return startHeapOf(func() int { return *mib })(ctx, b, n)
}

// startHeapOf starts bench_heap with size() MiB.
func startHeapOf(size func() int) func(ctx context.Context, b *bench, n *cluster.Node) (*workload, error) {
	return func(ctx context.Context, b *bench, n *cluster.Node) (*workload, error) {
		p, err := n.Start(cluster.StartOptions{}, b.heapBin, strconv.Itoa(size()))
		if err != nil {
			return nil, err
		}
		if err := waitReady(ctx, p); err != nil || !p.Running() {
			p.Stop()
			return nil, fmt.Errorf("bench_heap on %s: %v (running %v)", n, err, p.Running())
		}
		return &workload{proc: p, comm: "bench_heap", settleFor: 200 * time.Millisecond}, nil
	}
}

func startWriter(rate int) func(context.Context, *bench, *cluster.Node) (*workload, error) {
	return func(ctx context.Context, b *bench, n *cluster.Node) (*workload, error) {
		// The lifetime is a safety net: the run kills it long before.
		p, err := n.Start(cluster.StartOptions{}, b.writerBin, strconv.Itoa(*mib), strconv.Itoa(rate), "3600")
		if err != nil {
			return nil, err
		}
		if err := waitReady(ctx, p); err != nil || !p.Running() {
			p.Stop()
			return nil, fmt.Errorf("bench_writer on %s: %v (running %v)", n, err, p.Running())
		}
		// A second of writing: the steady state.
		return &workload{proc: p, comm: "bench_writer", settleFor: time.Second, progress: p.Log}, nil
	}
}

const redisPort = "6379"

// startRedis starts redis-server on n (no persistence), fills it through
// the service address, and starts the client's load on it: over -conns
// connections, a request every -interval on each; or, if nconns is not 0,
// over nconns connections, each nconns times less often.
func startRedis(nconns int) func(ctx context.Context, b *bench, n *cluster.Node) (*workload, error) {
	return func(ctx context.Context, b *bench, n *cluster.Node) (*workload, error) {
		c, every := *conns, *interval
		if nconns > 0 {
			c, every = nconns, *interval*time.Duration(nconns)
		}
		return startRedisLoad(ctx, b, n, c, every)
	}
}

func startRedisLoad(ctx context.Context, b *bench, n *cluster.Node, nconns int, every time.Duration) (_ *workload, err error) {
	p, err := n.Start(cluster.StartOptions{}, b.redisBin,
		"--port", redisPort, "--bind", "0.0.0.0", "::", "--protected-mode", "no",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
		"--dir", b.c.Dir, "--enable-debug-command", "yes")
	if err != nil {
		return nil, err
	}
	w := &workload{proc: p, comm: "redis-server", addr: net.JoinHostPort(b.c.VIP.String(), redisPort), settleFor: time.Second}
	defer func() {
		if err != nil {
			w.stop()
		}
	}()
	admin, err := dialRedis(ctx, b.c.Client, w.addr)
	if err != nil {
		data, _ := os.ReadFile(p.Log)
		return nil, fmt.Errorf("redis does not answer at %s: %w\n%s", w.addr, err, data)
	}
	defer admin.Close()
	if pid, err := admin.Info("server", "process_id"); err != nil || pid != strconv.Itoa(p.NSPID) {
		return nil, fmt.Errorf("the service address reaches redis process %s (%v), want %d on %s", pid, err, p.NSPID, n)
	}
	if _, err := admin.Str("DEBUG", "POPULATE", strconv.Itoa(*keys)); err != nil {
		return nil, err
	}
	if got, err := admin.Int("DBSIZE"); err != nil || got != int64(*keys) {
		return nil, fmt.Errorf("DBSIZE %d (%v) after DEBUG POPULATE %d", got, err, *keys)
	}
	load := &resp.Load{
		Dial: func(ctx context.Context) (net.Conn, error) {
			return b.c.Client.Dial(ctx, "tcp", w.addr)
		},
		Conns:       nconns,
		Interval:    every,
		Keys:        *keys,
		MaxDuration: 10 * time.Minute,
	}
	w.load = load
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		load.Run(lctx)
	}()
	w.stopLoad = func() {
		cancel()
		<-done
	}
	if err := w.load.WaitRequests(ctx, 100, 10*time.Second); err != nil {
		return nil, err
	}
	w.load.Window() // the start is not the steady state
	return w, nil
}

// dialRedis connects to addr from node n once redis answers PING (up to
// 10 s).
func dialRedis(ctx context.Context, n *cluster.Node, addr string) (*resp.Conn, error) {
	c, err := resp.DialReady(ctx, func(ctx context.Context) (net.Conn, error) { return n.Dial(ctx, "tcp", addr) }, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to redis at %s: %w", addr, err)
	}
	return c, nil
}

// optInNames are the scenarios only -scenarios runs.
func optInNames() []string {
	var out []string
	for _, sc := range allScenarios {
		if sc.optIn {
			out = append(out, sc.name)
		}
	}
	return out
}
