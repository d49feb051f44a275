package e2e

// Real programs under client load, moved between the nodes of a cluster
// (e2e/cluster) and back, A -> B -> A, while a client on the client node
// uses them through the VIP (issue 7): the Go HTTP server with keep-alive
// clients, python3's http.server, redis-server under a steady client;
// listeners that go on accepting while a migration runs; a link that
// falls silent while the process is frozen. The clients must see no error,
// and their connections must survive: no new connection is needed.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

// roundTrip is the two steps of every test: A -> B, then back.
func roundTrip(c *cluster.Cluster) [][2]*cluster.Node {
	return [][2]*cluster.Node{{c.A, c.B}, {c.B, c.A}}
}

// goHTTPRequest is a request to the Go HTTP server and its answer: mostly
// /work?n=N (N goroutines sum N*N), every third /hello.
func goHTTPRequest(w, i int) (string, string) {
	if i%3 == 2 {
		return "/hello", "hello from gohttp\n"
	}
	n := (w*7+i)%40 + 1
	return fmt.Sprintf("/work?n=%d", n), fmt.Sprintf("sum %d\n", n*n)
}

// TestNodeProgramGoHTTPKeepAlive: the Go HTTP server (testdata/gohttp,
// plain TCP sockets: GODEBUG=multipathtcp=0) listens on the wildcard
// address of A; four clients on the client node, each over one keep-alive
// connection, send it a request every 2 ms through the VIP. The server
// moves to B and back to A: each time exactly one server runs, on the
// target, with its PID; every request is answered right, and no client
// needs a new connection.
func TestNodeProgramGoHTTPKeepAlive(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	requireHooks(t, c)
	p := startNodeGoHTTP(t, c.A, "multipathtcp=0")
	logOnFailure(t, c, p.Log)
	comm := procComm(t, p.PID)
	const workers = 4
	l := &httpLoad{node: c.Client, base: vipURL(c, nodeHTTPPort), workers: workers, keepAlive: true,
		pause: 2 * time.Millisecond, request: goHTTPRequest, alive: processAlive(c, comm, p.NSPID, p.Log)}
	l.start(t)
	l.waitEach(t, 50)
	if d := l.dials.Load(); d != workers {
		t.Fatalf("%d connections dialled for %d keep-alive clients during the warm-up (%s)", d, workers, l.status())
	}
	fresh := l.fresh.Load()
	l.takeGap()
	for _, step := range roundTrip(c) {
		res := migrateStep(t, c, step[0], step[1], comm, p.NSPID, p.Log)
		l.waitEach(t, 50)
		gap, _ := l.takeGap()
		t.Logf("%s -> %s: longest wait of a client between two answers %v; migrate's downtime %.1f ms (target %.1f ms)",
			step[0], step[1], gap.Round(100*time.Microsecond), res.DowntimeMS, res.TargetDowntimeMS)
	}
	waitLogTick(t, p.Log, lastLogTick(t, p.Log)+3)
	l.finish()
	t.Logf("clients: %s", l.status())
	l.checkNoErrors(t)
	if d := l.dials.Load(); d != workers {
		t.Errorf("%d connections dialled by %d keep-alive clients: the migrations broke %d", d, workers, d-workers)
	}
	if f := l.fresh.Load(); f != fresh {
		t.Errorf("%d requests went out on a fresh connection after the warm-up", f-fresh)
	}
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 10)
}

// TestNodeProgramGoHTTPMPTCPRefused: the same server as Go builds it by
// default makes MPTCP sockets, and MPTCP connections have no repair mode:
// with an MPTCP client connected, migrate refuses, says why (MPTCP, and
// GODEBUG=multipathtcp=0), and the original runs on, on A, its client's
// connection intact.
func TestNodeProgramGoHTTPMPTCPRefused(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	p := startNodeGoHTTP(t, c.A, "")
	logOnFailure(t, c, p.Log)
	if proto := listenerProtocol(t, p.PID); proto != unix.IPPROTO_MPTCP {
		t.Skipf("the Go server listens with protocol %d, not MPTCP (%d): this kernel has no MPTCP", proto, unix.IPPROTO_MPTCP)
	}
	comm := procComm(t, p.PID)
	// The client makes an MPTCP connection too (Go's dialer does not by
	// default; a plain TCP client of an MPTCP listener gets a plain TCP
	// socket, which moves).
	l := &httpLoad{node: c.Client, base: vipURL(c, nodeHTTPPort), workers: 1, keepAlive: true,
		pause: 2 * time.Millisecond, request: goHTTPRequest,
		dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := c.Client.Do(func() error {
				d := &net.Dialer{}
				d.SetMultipathTCP(true)
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}}
	l.start(t)
	l.waitEach(t, 20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Migrate(ctx, c.A, c.B, p.NSPID)
	msg := checkFailed(t, res, err)
	t.Logf("migrate: %s", msg)
	if !strings.Contains(msg, "MPTCP") || !strings.Contains(msg, "multipathtcp=0") {
		t.Errorf("migrate's error does not say that MPTCP connections cannot move, and what to do: %s", msg)
	}
	loc := onlyCopy(t, c, comm, p.NSPID, c.A)
	if loc.PID != p.PID || !p.Running() {
		t.Errorf("the server on A is pid %d (running: %v), want the original %d", loc.PID, p.Running(), p.PID)
	}
	checkVIPOn(t, c, c.A)
	checkNodeEmpty(t, c.B)
	l.waitEach(t, 20)
	l.finish()
	l.checkNoErrors(t)
	if d := l.dials.Load(); d != 1 {
		t.Errorf("the client dialled %d connections, want 1", d)
	}
}

// TestNodeProgramPythonHTTPServer: `python3 -m http.server` (Debian's
// python) serves a directory from A; three clients on the client node
// fetch a 64 KiB file and a small one through the VIP, a new connection
// each (http.server speaks HTTP/1.0 and closes), every 5 ms. It moves to
// B and back: no fetch fails (a connection attempt during the freeze is
// not refused: its SYN is dropped by the network lock, then retransmitted
// or replayed), every answer is whole. Here the VIP moves with --hook
// commands (ip, arping), the other node tests move it with --address.
func TestNodeProgramPythonHTTPServer(t *testing.T) {
	requirePython(t)
	c := newCluster(t, cluster.Options{Hooks: cluster.HooksOn})
	requireHooks(t, c)
	www := t.TempDir()
	data := make([]byte, 64<<10)
	for i := 0; i < len(data); i += sha256.Size {
		h := sha256.Sum256([]byte(strconv.Itoa(i)))
		copy(data[i:], h[:])
	}
	hello := "hello from python on the cluster\n"
	for name, b := range map[string][]byte{"data.bin": data, "hello.txt": []byte(hello)} {
		if err := os.WriteFile(filepath.Join(www, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const port = 8000
	p, err := c.A.Start(cluster.StartOptions{Dir: www}, python3, "-X", "faulthandler", "-u", "-m", "http.server", fmt.Sprint(port))
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, c, p.Log)
	request := func(w, i int) (string, string) {
		if (w+i)%2 == 0 {
			return "/data.bin", string(data)
		}
		return "/hello.txt", hello
	}
	testutil.WaitFor(t, long, "python's http.server to answer through the VIP", func() bool {
		got, err := nodeHTTPGet(c.Client, vipURL(c, port)+"/hello.txt", time.Second)
		return err == nil && got == hello
	})
	comm := procComm(t, p.PID)
	l := &httpLoad{node: c.Client, base: vipURL(c, port), workers: 3, pause: 5 * time.Millisecond, request: request,
		alive: processAlive(c, comm, p.NSPID, p.Log)}
	l.start(t)
	l.waitEach(t, 20)
	l.takeGap()
	for _, step := range roundTrip(c) {
		res := migrateStep(t, c, step[0], step[1], comm, p.NSPID, p.Log)
		l.waitEach(t, 20)
		gap, _ := l.takeGap()
		t.Logf("%s -> %s: longest wait of a client between two answers %v; migrate's downtime %.1f ms (target %.1f ms)",
			step[0], step[1], gap.Round(100*time.Microsecond), res.DowntimeMS, res.TargetDowntimeMS)
	}
	l.finish()
	t.Logf("clients: %s", l.status())
	l.checkNoErrors(t)
	onlyCopy(t, c, comm, p.NSPID, c.A)
	for _, line := range testutil.LogLines(t, p.Log) {
		if strings.Contains(line, "Traceback") || strings.Contains(line, "Error") {
			t.Errorf("http.server's log: %s", line)
		}
	}
}

// redisPort is redis-server's port on the nodes.
const redisPort = 6379

// TestNodeProgramRedis: redis-server on A with 100000 keys (DEBUG
// POPULATE); a client on the client node, over one connection through the
// VIP, issues SET c:last N, GET c:last (must be N) and INCR c:counter
// (must be N) every millisecond. Redis moves to B and back: every reply is
// right, the connection is never dialled again, the counters go on
// without a gap, and, the client's two keys put aside, DBSIZE and DEBUG
// DIGEST are what they were. An idle second connection (the one that
// filled the keys) survives too.
func TestNodeProgramRedis(t *testing.T) {
	redis, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skipf("redis-server is not installed (apt-get install redis-server): %v", err)
	}
	c := newCluster(t, cluster.Options{})
	requireHooks(t, c)
	p, err := c.A.Start(cluster.StartOptions{}, redis,
		"--port", fmt.Sprint(redisPort), "--bind", "0.0.0.0", "::", "--protected-mode", "no",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
		"--dir", c.Dir, "--enable-debug-command", "yes")
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, c, p.Log)
	addr := net.JoinHostPort(c.VIP.String(), fmt.Sprint(redisPort))
	admin := dialNodeRedis(t, c.Client, addr)
	comm := procComm(t, p.PID)
	admin.do(t, "DEBUG", "POPULATE", "100000")
	keys := admin.int(t, "DBSIZE")
	digest := admin.str(t, "DEBUG", "DIGEST")
	if keys != 100000 {
		t.Fatalf("DBSIZE %d after DEBUG POPULATE 100000", keys)
	}

	conn := dialNodeRedis(t, c.Client, addr)
	load := &redisLoad{c: conn, stop: make(chan struct{}), done: make(chan struct{})}
	go load.run(time.Now().Add(2*time.Minute), 500000)
	t.Cleanup(load.finish)
	load.waitMore(t, 300)
	load.takeGap()
	for _, step := range roundTrip(c) {
		res := migrateStep(t, c, step[0], step[1], comm, p.NSPID, p.Log)
		load.waitMore(t, 300)
		gap, _ := load.takeGap()
		t.Logf("%s -> %s: longest gap between two replies %v; migrate's downtime %.1f ms (target %.1f ms)",
			step[0], step[1], gap.Round(100*time.Microsecond), res.DowntimeMS, res.TargetDowntimeMS)
	}
	load.finish()
	n, err := load.result()
	t.Logf("client: %d rounds of SET, GET, INCR over one connection", n)
	if err != nil {
		t.Fatalf("the client, after %d rounds: %v", n, err)
	}
	if got := admin.str(t, "GET", "c:last"); got != strconv.FormatInt(n, 10) {
		t.Errorf("c:last is %q, the client last wrote %d", got, n)
	}
	if got := admin.str(t, "GET", "c:counter"); got != strconv.FormatInt(n, 10) {
		t.Errorf("c:counter is %q after %d INCRs", got, n)
	}
	if pid := admin.info(t, "server", "process_id"); pid != strconv.Itoa(p.NSPID) {
		t.Errorf("redis says it is process %s, want %d", pid, p.NSPID)
	}
	if got := admin.int(t, "DEL", "c:last", "c:counter"); got != 2 {
		t.Errorf("DEL of the client's keys: %d", got)
	}
	if k, d := admin.int(t, "DBSIZE"), admin.str(t, "DEBUG", "DIGEST"); k != keys || d != digest {
		t.Errorf("after the round trip: DBSIZE %d, digest %s; before: %d, %s", k, d, keys, digest)
	}
	admin.Close()
	onlyCopy(t, c, comm, p.NSPID, c.A)
	for _, l := range testutil.LogLines(t, p.Log) {
		if strings.Contains(l, "REDIS BUG REPORT") || strings.Contains(l, "Guru Meditation") {
			t.Fatalf("redis crashed:\n%s", strings.Join(testutil.LogLines(t, p.Log), "\n"))
		}
	}
}

// dialNodeRedis connects from node n to redis at addr, retrying until it
// answers PING (it may be starting).
func dialNodeRedis(t *testing.T, n *cluster.Node, addr string) *resp {
	t.Helper()
	var c *resp
	var last error
	if !testutil.Poll(long, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		nc, err := n.Dial(ctx, "tcp", addr)
		if err != nil {
			last = err
			return false
		}
		c = &resp{c: nc, r: bufio.NewReaderSize(nc, 1<<16), w: bufio.NewWriterSize(nc, 1<<16)}
		nc.SetDeadline(time.Now().Add(time.Second))
		c.send("PING")
		c.flush()
		v, err := c.read()
		if err == nil && v == "PONG" {
			nc.SetDeadline(time.Time{})
			return true
		}
		last = fmt.Errorf("PING: %v %v", v, err)
		c.Close()
		return false
	}) {
		t.Fatalf("redis at %s from node %s: %v", addr, n, last)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// redisLoad is the steady client of TestNodeProgramRedis: rounds of SET
// c:last N, GET c:last, INCR c:counter over one connection, a millisecond
// apart, every reply checked. The first error ends it (the connection is
// never dialled again).
type redisLoad struct {
	c          *resp
	stop, done chan struct{}
	stopOnce   sync.Once

	mu       sync.Mutex
	rounds   int64
	err      error
	last     time.Time // of the last reply
	maxGap   time.Duration
	maxGapAt time.Time
}

// redisOpTimeout bounds one command of the steady client.
const redisOpTimeout = 10 * time.Second

func (r *redisLoad) run(deadline time.Time, max int64) {
	defer close(r.done)
	for n := int64(1); n <= max && time.Now().Before(deadline); n++ {
		select {
		case <-r.stop:
			return
		default:
		}
		v := strconv.FormatInt(n, 10)
		err := r.expect("OK", "SET", "c:last", v)
		if err == nil {
			err = r.expect(v, "GET", "c:last")
		}
		if err == nil {
			err = r.expect(n, "INCR", "c:counter")
		}
		r.mu.Lock()
		if err != nil {
			r.err = fmt.Errorf("%s: round %d: %w", time.Now().Format("15:04:05.000"), n, err)
		} else {
			r.rounds = n
		}
		r.mu.Unlock()
		if err != nil {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// expect sends one command and checks its reply.
func (r *redisLoad) expect(want any, args ...string) error {
	timer := time.AfterFunc(redisOpTimeout, func() { r.c.c.SetReadDeadline(time.Now()) })
	defer timer.Stop()
	r.c.c.SetWriteDeadline(time.Now().Add(redisOpTimeout))
	r.c.send(args...)
	if err := r.c.flush(); err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	v, err := r.c.read()
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	now := time.Now()
	r.mu.Lock()
	if !r.last.IsZero() {
		if gap := now.Sub(r.last); gap > r.maxGap {
			r.maxGap, r.maxGapAt = gap, now
		}
	}
	r.last = now
	r.mu.Unlock()
	if v != want {
		return fmt.Errorf("%s: reply %#v, want %#v", strings.Join(args, " "), v, want)
	}
	return nil
}

// waitMore waits until n more rounds were done; an error fails the test.
func (r *redisLoad) waitMore(t *testing.T, n int64) {
	t.Helper()
	from, _ := r.result()
	var last int64
	var err error
	if !testutil.Poll(long, func() bool {
		last, err = r.result()
		return err != nil || last >= from+n
	}) || err != nil {
		t.Fatalf("the redis client, at round %d (waiting for %d): %v", last, from+n, err)
	}
}

func (r *redisLoad) result() (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rounds, r.err
}

func (r *redisLoad) takeGap() (time.Duration, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, at := r.maxGap, r.maxGapAt
	r.maxGap, r.maxGapAt = 0, time.Time{}
	return g, at
}

// finish stops the client after its round and waits for it.
func (r *redisLoad) finish() {
	r.stopOnce.Do(func() { close(r.stop) })
	<-r.done
}

// TestNodeProgramListenerAccepts: while the Go HTTP server moves to B and
// back, three clients on the client node open new connections to it
// through the VIP as fast as they can (no keep-alive), one request each.
// None is refused or reset: a connection attempt made while the process is
// frozen is held (its SYN dropped by the network lock) and gets through
// once the process runs again, on the target.
func TestNodeProgramListenerAccepts(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	requireHooks(t, c)
	p := startNodeGoHTTP(t, c.A, "multipathtcp=0")
	logOnFailure(t, c, p.Log)
	comm := procComm(t, p.PID)
	l := &httpLoad{node: c.Client, base: vipURL(c, nodeHTTPPort), workers: 3, max: 200000, request: goHTTPRequest,
		alive: processAlive(c, comm, p.NSPID, p.Log)}
	l.start(t)
	l.waitEach(t, 20)
	l.takeGap()
	for _, step := range roundTrip(c) {
		before, dials := l.total(), l.dials.Load()
		res := migrateStep(t, c, step[0], step[1], comm, p.NSPID, p.Log)
		during := l.dials.Load() - dials
		l.waitEach(t, 20)
		gap, _ := l.takeGap()
		n, _ := l.errors()
		t.Logf("%s -> %s: %d connections opened during the migration (%d answers), longest wait between two answers %v, %d errors so far; migrate's downtime %.1f ms",
			step[0], step[1], during, l.total()-before, gap.Round(100*time.Microsecond), n, res.DowntimeMS)
	}
	l.finish()
	t.Logf("clients: %s", l.status())
	l.checkNoErrors(t)
}

// TestNodeProgramLinkLossFrozen: the link to B falls silent (every packet
// lost, both ways, the link up) in the final phase, with keep-alive clients
// of the Go HTTP server on A: in subtest "final" just after the freeze
// (the final round's pages stall), in "ready" once the state was sent and
// the VIP taken off A, while B restores (B's pre-resume hook sleeps a
// second, so that its "ready" is lost). migrate gives up once the link's
// keepalive times out, exits 1, and the original resumes on A: exactly
// one server, the original, on A with the VIP; the clients go on over
// their connections with no error. With the link back, B holds nothing,
// and a migration to B goes through.
func TestNodeProgramLinkLossFrozen(t *testing.T) {
	// The page stream at 250 kB/s: the final round's pages (some 50 kB
	// compressed) mostly take long enough to be caught; if they were
	// quicker, migrate fails waiting for B's "ready".
	t.Run("final", func(t *testing.T) {
		runLinkLossFrozen(t, `msg="handoff: freeze"`, []string{"final", "ready"}, "--bandwidth", "0.25")
	})
	t.Run("ready", func(t *testing.T) { runLinkLossFrozen(t, `msg=hook stage=post-dump`, []string{"ready"}) })
}

// runLinkLossFrozen silences B's link once migrate's stderr (-vv) shows
// when; migrate (with extra flags) must then fail in one of phases.
func runLinkLossFrozen(t *testing.T, when string, phases []string, extra ...string) {
	c := newCluster(t, cluster.Options{ServeArgs: []string{"--hook", "pre-resume=sleep 1"}})
	requireHooks(t, c)
	p := startNodeGoHTTP(t, c.A, "multipathtcp=0")
	logOnFailure(t, c, p.Log)
	comm := procComm(t, p.PID)
	const workers = 2
	l := &httpLoad{node: c.Client, base: vipURL(c, nodeHTTPPort), workers: workers, keepAlive: true,
		pause: 5 * time.Millisecond, timeout: 45 * time.Second, request: goHTTPRequest,
		alive: processAlive(c, comm, p.NSPID, p.Log)}
	l.start(t)
	l.waitEach(t, 20)
	l.takeGap()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := c.StartMigration(ctx, c.A, c.B, p.NSPID, append([]string{"-vv"}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WaitStderr(ctx, when); err != nil {
		t.Fatal(err)
	}
	undo := silenceLink(t, c, c.B)
	silenced := time.Now()
	res, err := m.Wait()
	msg := checkFailed(t, res, err)
	t.Logf("migrate gave up %v after the link fell silent: %s", time.Since(silenced).Round(time.Millisecond), msg)
	if !slices.ContainsFunc(phases, func(p string) bool { return strings.Contains(msg, "migration failed ("+p+",") }) {
		t.Errorf("migrate failed in another phase than %v: %s", phases, msg)
	}
	if !strings.Contains(res.Stderr, "resuming the original") {
		t.Errorf("migrate's log does not say it resumed the original:\n%s", res.Stderr)
	}
	loc := onlyCopy(t, c, comm, p.NSPID, c.A)
	if loc.PID != p.PID || !p.Running() {
		t.Fatalf("the server on A is pid %d (running: %v), want the original %d", loc.PID, p.Running(), p.PID)
	}
	checkVIPOn(t, c, c.A)
	l.waitEach(t, 20)
	gap, _ := l.takeGap()
	t.Logf("the clients waited at most %v between two answers", gap.Round(time.Millisecond))

	undo()
	checkNodeEmpty(t, c.B)
	res2 := migrateStep(t, c, c.A, c.B, comm, p.NSPID, p.Log)
	l.waitEach(t, 20)
	gap, _ = l.takeGap()
	t.Logf("A -> B with the link back: longest wait between two answers %v, downtime %.1f ms (B's pre-resume hook sleeps 1 s)",
		gap.Round(time.Millisecond), res2.DowntimeMS)
	l.finish()
	t.Logf("clients: %s", l.status())
	l.checkNoErrors(t)
	if d := l.dials.Load(); d != workers {
		t.Errorf("%d connections dialled by %d keep-alive clients", d, workers)
	}
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 10)
}

// growingHeap is a python program that grows a heap the way glibc grows
// the heap of a thread's malloc arena: it reserves 256 MiB PROT_NONE
// (printing "base=ADDR"), makes one page more of it readable and writable
// (mprotect) every millisecond, and writes each page only 1000 pages
// later. Every 100 pages it prints "tick N granted=G written=W".
const growingHeap = `
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE, N, LAG = 4096, 65536, 1000
base = libc.mmap(None, N * PAGE, 0, 0x22, -1, 0)
if base in (None, ctypes.c_void_p(-1).value):
    print("FAIL mmap", ctypes.get_errno(), flush=True)
    sys.exit(1)
print("base=%#x" % base, flush=True)
written = 0
for granted in range(1, N + 1):
    if libc.mprotect(base + (granted - 1) * PAGE, PAGE, 3) != 0:
        print("FAIL mprotect", ctypes.get_errno(), flush=True)
        sys.exit(1)
    while written < granted - LAG:
        ctypes.memset(base + written * PAGE, 0x78, 8)
        written += 1
    if granted % 100 == 0:
        print("tick %d granted=%d written=%d" % (granted // 100, granted, written), flush=True)
    time.sleep(0.001)
`

// TestNodeProgramHeapGrowth: a process whose heap grows as glibc grows a
// thread arena's (python: mprotect of a PROT_NONE reservation to
// read-write, page by page, each page written 1 s after it became
// writable) moves to B and back. Each time, in the migrated process, the
// whole grown part is readable and writable, the pages not yet written
// included, and the process runs on. (python3 -m http.server, whose
// request threads grow their arenas so, and the Go HTTP server, whose
// heap grows by mmap over its PROT_NONE reservation, died of SIGSEGV
// just after some migrations: see heapGrowthBug.)
func TestNodeProgramHeapGrowth(t *testing.T) {
	requirePython(t)
	c := newCluster(t, cluster.Options{})
	p, err := c.A.Start(cluster.StartOptions{}, python3, "-X", "faulthandler", "-u", "-c", growingHeap)
	if err != nil {
		t.Fatal(err)
	}
	logOnFailure(t, c, p.Log)
	waitLogTick(t, p.Log, 5)
	comm := procComm(t, p.PID)
	var base uint64
	for _, l := range testutil.LogLines(t, p.Log) {
		if v, ok := strings.CutPrefix(l, "base=0x"); ok {
			base, err = strconv.ParseUint(v, 16, 64)
		}
	}
	if base == 0 || err != nil {
		t.Fatalf("no base=ADDR in the log (%v)", err)
	}
	for _, step := range roundTrip(c) {
		last := lastLogTick(t, p.Log)
		migrateStep(t, c, step[0], step[1], comm, p.NSPID, p.Log)
		// What the log says was granted, once it ticked after the
		// migration, the maps must show.
		if !testutil.Poll(short, func() bool { return lastLogTick(t, p.Log) > last+1 }) {
			t.Fatalf("after %s -> %s the process ticks no more: %v", step[0], step[1], processAlive(c, comm, p.NSPID, p.Log)())
		}
		lines := testutil.LogLines(t, p.Log)
		granted, _ := strconv.ParseUint(field(t, lines[len(lines)-1], "granted"), 10, 64)
		locs, err := c.Locate(comm, p.NSPID)
		if err != nil || len(locs) != 1 {
			t.Fatalf("after %s -> %s: %v %v; %v", step[0], step[1], locs, err, processAlive(c, comm, p.NSPID, p.Log)())
		}
		end := base + granted*4096
		if bad := mapsNotRW(t, locs[0].PID, base, end); len(bad) > 0 {
			t.Errorf("after %s -> %s: the heap's part made read-write before the migration, %#x-%#x (%d pages), is not all read-write in the migrated process: %s\n(%s)",
				step[0], step[1], base, end, granted, strings.Join(bad, "; "), heapGrowthBug)
		}
		last = lastLogTick(t, p.Log)
		alive := processAlive(c, comm, p.NSPID, p.Log)
		if !testutil.Poll(short, func() bool { return lastLogTick(t, p.Log) > last+12 || alive() != nil }) || alive() != nil {
			t.Fatalf("after %s -> %s the process ticks no more (at tick %d): %v",
				step[0], step[1], lastLogTick(t, p.Log), processAlive(c, comm, p.NSPID, p.Log)())
		}
		if t.Failed() {
			return
		}
	}
	checkTicksContinuous(t, testutil.LogLines(t, p.Log), 10)
}

// mapsNotRW returns the areas of process pid (as the machine sees it)
// within [start, end) that are not mapped read-write, and the holes.
func mapsNotRW(t *testing.T, pid int, start, end uint64) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	at := start
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		s, _ := strconv.ParseUint(lo, 16, 64)
		e, _ := strconv.ParseUint(hi, 16, 64)
		if e <= start || s >= end {
			continue
		}
		if s > at {
			bad = append(bad, fmt.Sprintf("%#x-%#x unmapped", at, s))
		}
		if !strings.HasPrefix(f[1], "rw") {
			bad = append(bad, fmt.Sprintf("%#x-%#x %s (%d pages)", max(s, start), min(e, end), f[1], (min(e, end)-max(s, start))/4096))
		}
		at = e
	}
	if at < end {
		bad = append(bad, fmt.Sprintf("%#x-%#x unmapped", at, end))
	}
	return bad
}
