package e2e

// Helpers of the cluster tests with real programs (node_programs_test.go):
// the Go HTTP server listening on the wildcard address of a node, a load
// of HTTP requests from the client node, one migration step checked, a
// link made silent.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/internal/testutil"
)

var (
	nodeGoHTTPOnce sync.Once
	nodeGoHTTPBin  string
	nodeGoHTTPErr  error
)

// gohttpListen is the line of testdata/gohttp that makes its listener
// (127.0.0.1 only), and gohttpListenAny its replacement for the cluster
// tests: the wildcard address, both families, where the VIP arrives.
const (
	gohttpListen    = `net.Listen("tcp4", "127.0.0.1:"+os.Args[1])`
	gohttpListenAny = `net.Listen("tcp", ":"+os.Args[1])`
)

// buildNodeGoHTTP builds testdata/gohttp, listening on the wildcard
// address instead of 127.0.0.1 (a copy of its source with that one line
// changed), once per test binary.
func buildNodeGoHTTP(t testing.TB) string {
	t.Helper()
	goBin := goTool(t)
	nodeGoHTTPOnce.Do(func() {
		src := filepath.Join(testutil.Testdata(), "gohttp")
		dir, err := os.MkdirTemp("", "migrate-gohttp-any-")
		if err != nil {
			nodeGoHTTPErr = err
			return
		}
		main, err := os.ReadFile(filepath.Join(src, "main.go"))
		if err != nil {
			nodeGoHTTPErr = err
			return
		}
		if !strings.Contains(string(main), gohttpListen) {
			nodeGoHTTPErr = fmt.Errorf("testdata/gohttp/main.go no longer listens with %s: update buildNodeGoHTTP", gohttpListen)
			return
		}
		mod, err := os.ReadFile(filepath.Join(src, "go.mod"))
		if err != nil {
			nodeGoHTTPErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), mod, 0o644); err != nil {
			nodeGoHTTPErr = err
			return
		}
		patched := strings.Replace(string(main), gohttpListen, gohttpListenAny, 1)
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(patched), 0o644); err != nil {
			nodeGoHTTPErr = err
			return
		}
		nodeGoHTTPBin = filepath.Join(dir, "gohttp")
		cmd := exec.Command(goBin, "build", "-o", nodeGoHTTPBin, ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off", "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			nodeGoHTTPErr = fmt.Errorf("go build testdata/gohttp (wildcard listener): %v\n%s", err, b)
		}
	})
	if nodeGoHTTPErr != nil {
		t.Fatal(nodeGoHTTPErr)
	}
	return nodeGoHTTPBin
}

// nodeHTTPPort is the port of the HTTP servers on the nodes (each node's
// network is its own).
const nodeHTTPPort = 8080

// startNodeGoHTTP starts the Go HTTP server on node n, listening on the
// wildcard address, port nodeHTTPPort, with GODEBUG=godebug if not empty
// (multipathtcp=0 for a plain TCP listener; without it Go makes MPTCP
// sockets, which migrate cannot move once connected). It returns once
// the server says it is ready and ticks.
func startNodeGoHTTP(t *testing.T, n *cluster.Node, godebug string) *cluster.Proc {
	t.Helper()
	env := []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	if godebug != "" {
		env = append(env, "GODEBUG="+godebug)
	}
	p, err := n.Start(cluster.StartOptions{Env: env}, buildNodeGoHTTP(t), fmt.Sprint(nodeHTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, p.Log, "ready ")
	waitLogTick(t, p.Log, 3)
	return p
}

// vipURL is http://VIP:PORT (IPv4).
func vipURL(c *cluster.Cluster, port int) string {
	return "http://" + net.JoinHostPort(c.VIP.String(), fmt.Sprint(port))
}

// nodeHTTPGet fetches url from node n on a connection of its own, and
// returns the body of a 200 answer.
func nodeHTTPGet(n *cluster.Node, url string, timeout time.Duration) (string, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.Dial(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Timeout: timeout, Transport: tr}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = errors.New(resp.Status)
	}
	return string(b), err
}

// logOnFailure logs, if the test failed, the TCP sockets of the agent
// nodes (ss), the processes on them, the workload's log, and the
// segfaults the kernel logged since.
func logOnFailure(t *testing.T, c *cluster.Cluster, workloadLog string) {
	before := len(kernelLog("segfault"))
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		if segv := kernelLog("segfault"); len(segv) > before {
			t.Logf("the kernel logged since the test began:\n%s", strings.Join(segv[before:], "\n"))
		}
		for _, n := range []*cluster.Node{c.A, c.B} {
			out, err := exec.Command("ip", "netns", "exec", n.NetNS, "ss", "-tanoie").CombinedOutput()
			t.Logf("TCP sockets of node %s (%v):\n%s", n, err, out)
			ps, err := n.Procs()
			t.Logf("processes of node %s (%v): %+v", n, err, ps)
		}
		if workloadLog != "" {
			// Its own words, without its ticks and access log lines.
			var said []string
			lines := testutil.LogLines(t, workloadLog)
			for _, l := range lines {
				if !strings.HasPrefix(l, "tick ") && !strings.Contains(l, `"GET /`) && len(said) < 60 {
					said = append(said, l)
				}
			}
			t.Logf("the workload's log: %d lines; last: %q; the first others:\n%s", len(lines), lines[max(0, len(lines)-1):], strings.Join(said, "\n"))
		}
	})
}

// heapGrowthBug is the migrate bug TestNodeProgramHeapGrowth shows, which
// kills the Go and python servers of the other tests now and then just
// after a migration.
const heapGrowthBug = "known migrate bug: memory that became accessible (mprotect or mmap MAP_FIXED over a PROT_NONE reservation, " +
	"as glibc grows a thread arena's heap and Go its heap) after the last pre-copy round's layout and was not written before the freeze " +
	"stays PROT_NONE in the migrated process: the target's relayout keeps the area mapped with its old protection (same backing), " +
	"and \"set protections\" (target/memory.go protect) skips areas whose final protection is read-write; the process dies of SIGSEGV " +
	"when it writes there"

// processAlive returns a check that the process nspid (named comm) runs
// on some node; when it does not, it says what its log said last (a Go
// runtime's "fatal error" and signal), and the kernel's segfault lines.
func processAlive(c *cluster.Cluster, comm string, nspid int, log string) func() error {
	return func() error {
		locs, err := c.Locate(comm, nspid)
		if err != nil || len(locs) > 0 {
			return err
		}
		// Gone: look again a little later (a migration's handoff).
		time.Sleep(200 * time.Millisecond)
		if locs, err := c.Locate(comm, nspid); err != nil || len(locs) > 0 {
			return err
		}
		var said []string
		b, _ := os.ReadFile(log)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "fatal error") || strings.HasPrefix(l, "[signal") || strings.HasPrefix(l, "Fatal Python error") {
				said = append(said, l)
			}
		}
		segv := kernelLog(" " + comm + "[")
		segv = segv[max(0, len(segv)-3):]
		msg := fmt.Sprintf("%s (pid %d) runs on no node: it died; its log says %q; the kernel's last segfaults of %s:\n%s",
			comm, nspid, said, comm, strings.Join(segv, "\n"))
		if len(said) > 0 || len(segv) > 0 {
			msg += "\n(" + heapGrowthBug + ")"
		}
		return errors.New(msg)
	}
}

// kernelLog returns the lines of the kernel's log (dmesg) with a segfault
// report that contain s.
func kernelLog(s string) []string {
	out, err := exec.Command("dmesg").Output()
	if err != nil {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "segfault") && strings.Contains(l, s) {
			lines = append(lines, l)
		}
	}
	return lines
}

// procComm returns the comm of a process (PID as the machine sees it).
func procComm(t testing.TB, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// migrateStep moves the process nspid (named comm) from one node to the
// other and checks the step: migrate succeeded (outcome resumed, the same
// PID), exactly one copy runs, on the target, untraced, and the VIP is
// there alone. It logs the report.
//
// log is the process's log: if the process dies just after the migration,
// the failure says what it and the kernel said (see processAlive).
func migrateStep(t *testing.T, c *cluster.Cluster, from, to *cluster.Node, comm string, nspid int, log string) *cluster.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	res, err := c.Migrate(ctx, from, to, nspid)
	took := time.Since(start)
	if err != nil {
		stderr := ""
		if res != nil {
			stderr = res.Stderr
		}
		t.Fatalf("migrate %s -> %s: %v\nstderr:\n%s", from, to, err, stderr)
	}
	if res.Outcome != "resumed" || res.PID != nspid || len(res.Rounds) < 2 {
		t.Fatalf("migrate %s -> %s: report %+v", from, to, res)
	}
	t.Logf("%s -> %s: %d rounds, %d bytes on the wire (%d raw, RSS %d), downtime %.1f ms (target %.1f ms), total %.1f ms (%v with the command), VIP moved by %s",
		from, to, len(res.Rounds), res.BytesWire, res.BytesRaw, res.RSSBytes, res.DowntimeMS, res.TargetDowntimeMS,
		res.TotalMS, took.Round(time.Millisecond), res.VIPMovedBy)
	if err := processAlive(c, comm, nspid, log)(); err != nil {
		t.Fatalf("after %s -> %s: %v", from, to, err)
	}
	onlyCopy(t, c, comm, nspid, to)
	checkVIPOn(t, c, to)
	return res
}

// requireHooks skips a test whose connections must survive the move: the
// VIP must move with the process (the hooks), not after migrate returns.
func requireHooks(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	if !c.Hooks {
		t.Skip("migrate takes no --hook: the VIP cannot move with the connections")
	}
}

// httpLoad is HTTP requests from the client node to a server behind the
// VIP: workers, each with a transport (so a keep-alive connection) of its
// own, each sending one request after the other, pause apart, until
// stopped, after max requests, or at its deadline. It counts the
// connections it dials, the requests sent on a fresh connection (httptrace
// GotConn), the answers and the errors, and measures the longest time a
// worker waited between two answers and the slowest request.
type httpLoad struct {
	node      *cluster.Node
	base      string
	workers   int
	keepAlive bool
	pause     time.Duration // between two requests of a worker
	timeout   time.Duration // of one request (default 15 s)
	max       int           // requests per worker at most (default 100000)
	// request gives the path of worker w's request i and the body it
	// must answer.
	request func(w, i int) (path, want string)
	// dial makes a connection (default: node.Dial).
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// alive, if not nil, says why the server is gone: waits fail at once.
	alive func() error

	dials atomic.Int64
	fresh atomic.Int64
	ok    []atomic.Int64

	mu       sync.Mutex
	nerr     int
	errs     []string
	maxGap   time.Duration
	maxGapAt time.Time
	maxLat   time.Duration
	slow     int // requests slower than a second
	refused  int // failed requests: connection refused
	reset    int // failed requests: connection reset

	stop    chan struct{}
	stopped bool
	wg      sync.WaitGroup
	cancel  context.CancelFunc
	trs     []*http.Transport
}

// start runs the workers; a cleanup stops them.
func (l *httpLoad) start(t *testing.T) {
	t.Helper()
	if l.timeout == 0 {
		l.timeout = 15 * time.Second
	}
	if l.max == 0 {
		l.max = 100000
	}
	l.ok = make([]atomic.Int64, l.workers)
	l.stop = make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	l.cancel = cancel
	for w := range l.workers {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				l.dials.Add(1)
				if l.dial != nil {
					return l.dial(ctx, network, addr)
				}
				return l.node.Dial(ctx, network, addr)
			},
			DisableKeepAlives:   !l.keepAlive,
			MaxIdleConnsPerHost: 1,
			DisableCompression:  true,
		}
		l.trs = append(l.trs, tr)
		l.wg.Add(1)
		go l.worker(ctx, w, &http.Client{Transport: tr, Timeout: l.timeout})
	}
	t.Cleanup(l.finish)
}

func (l *httpLoad) worker(ctx context.Context, w int, cl *http.Client) {
	defer l.wg.Done()
	var last time.Time
	for i := 0; i < l.max; i++ {
		select {
		case <-l.stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		path, want := l.request(w, i)
		begin := time.Now()
		err := l.get(ctx, cl, path, want)
		now := time.Now()
		l.mu.Lock()
		if err != nil {
			l.nerr++
			switch {
			case errors.Is(err, unix.ECONNREFUSED):
				l.refused++
			case errors.Is(err, unix.ECONNRESET):
				l.reset++
			}
			if len(l.errs) < 10 {
				l.errs = append(l.errs, fmt.Sprintf("%s worker %d: GET %s: %v", now.Format("15:04:05.000"), w, path, err))
			}
		} else {
			if lat := now.Sub(begin); lat > l.maxLat {
				l.maxLat = lat
			}
			if now.Sub(begin) > time.Second {
				l.slow++
			}
			if !last.IsZero() {
				if gap := now.Sub(last); gap > l.maxGap {
					l.maxGap, l.maxGapAt = gap, now
				}
			}
			last = now
		}
		l.mu.Unlock()
		if err == nil {
			l.ok[w].Add(1)
		}
		if l.pause > 0 {
			select {
			case <-l.stop:
				return
			case <-time.After(l.pause):
			}
		}
	}
}

func (l *httpLoad) get(ctx context.Context, cl *http.Client, path, want string) error {
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if !i.Reused {
			l.fresh.Add(1)
		}
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, l.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	if string(b) != want {
		if len(b) > 64 {
			b = b[:64]
		}
		return fmt.Errorf("answer %q (%d bytes), want %d bytes", b, len(b), len(want))
	}
	return nil
}

// answered returns the answers of each worker so far.
func (l *httpLoad) answered() []int64 {
	out := make([]int64, l.workers)
	for w := range out {
		out[w] = l.ok[w].Load()
	}
	return out
}

// total returns the answers of all workers.
func (l *httpLoad) total() int64 {
	var n int64
	for _, v := range l.answered() {
		n += v
	}
	return n
}

// waitEach waits until every worker has n more answers.
func (l *httpLoad) waitEach(t *testing.T, n int64) {
	t.Helper()
	from := l.answered()
	var gone error
	if !testutil.Poll(long, func() bool {
		if l.alive != nil {
			if gone = l.alive(); gone != nil {
				return true
			}
		}
		now := l.answered()
		for w := range now {
			if now[w] < from[w]+n {
				return false
			}
		}
		return true
	}) {
		_, errs := l.errors()
		t.Fatalf("timed out after %v waiting for %d more answers for each HTTP worker: from %v to %v (%s); the first errors:\n%s",
			long, n, from, l.answered(), l.status(), strings.Join(errs, "\n"))
	}
	if gone != nil {
		t.Fatalf("while the HTTP clients waited for answers: %v", gone)
	}
}

// takeGap returns the longest wait of a worker between two answers since
// the last call, and when it ended.
func (l *httpLoad) takeGap() (time.Duration, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	g, at := l.maxGap, l.maxGapAt
	l.maxGap, l.maxGapAt = 0, time.Time{}
	return g, at
}

// errors returns the number of failed requests and the first ones.
func (l *httpLoad) errors() (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nerr, append([]string(nil), l.errs...)
}

func (l *httpLoad) status() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("%d answers, %d errors (%d refused, %d reset), %d connections dialled, %d requests on a fresh connection, slowest %v, %d slower than 1 s",
		l.total(), l.nerr, l.refused, l.reset, l.dials.Load(), l.fresh.Load(), l.maxLat.Round(time.Millisecond), l.slow)
}

// finish stops the workers (each ends its request first) and waits for
// them.
func (l *httpLoad) finish() {
	if l.stopped {
		return
	}
	l.stopped = true
	close(l.stop)
	l.wg.Wait()
	l.cancel()
	for _, tr := range l.trs {
		tr.CloseIdleConnections()
	}
}

// checkNoErrors fails the test if a request failed.
func (l *httpLoad) checkNoErrors(t *testing.T) {
	t.Helper()
	if n, errs := l.errors(); n > 0 {
		t.Errorf("%d HTTP requests failed (%s); the first:\n%s", n, l.status(), strings.Join(errs, "\n"))
	}
}

// silenceLink makes node n's link lose every packet, both ways, with its
// link up: a queueing discipline that drops all on n's eth0 (what n
// sends) and on its switch port (what n receives). netem loss 100% if
// the kernel has netem, else a pfifo of length 0 (it drops whatever is
// queued). It returns the undo, also run at cleanup.
func silenceLink(t *testing.T, c *cluster.Cluster, n *cluster.Node) func() {
	t.Helper()
	sw := cluster.Prefix + c.ID + "-switch"
	ends := [][2]string{{n.NetNS, "eth0"}, {sw, "port-" + n.Name}}
	var kind []string
	for _, k := range [][]string{{"netem", "loss", "100%"}, {"pfifo", "limit", "0"}} {
		args := append([]string{"-n", ends[0][0], "qdisc", "add", "dev", ends[0][1], "root"}, k...)
		if out, err := exec.Command("tc", args...).CombinedOutput(); err == nil {
			kind = k
			break
		} else {
			t.Logf("tc %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	if kind == nil {
		t.Skip("no queueing discipline to drop every packet (sch_netem, sch_fifo) in this kernel")
	}
	args := append([]string{"-n", ends[1][0], "qdisc", "add", "dev", ends[1][1], "root"}, kind...)
	if out, err := exec.Command("tc", args...).CombinedOutput(); err != nil {
		t.Fatalf("tc %s: %v: %s", strings.Join(args, " "), err, out)
	}
	var once sync.Once
	undo := func() {
		once.Do(func() {
			for _, e := range ends {
				if out, err := exec.Command("tc", "-n", e[0], "qdisc", "del", "dev", e[1], "root").CombinedOutput(); err != nil {
					t.Errorf("tc -n %s qdisc del dev %s root: %v: %s", e[0], e[1], err, out)
				}
			}
		})
	}
	t.Cleanup(undo)
	t.Logf("node %s's link silenced: %s on its eth0 and its switch port", n, strings.Join(kind, " "))
	return undo
}

// checkNodeEmpty waits until node n holds nothing but its service (PID 1)
// and the processes in keep.
func checkNodeEmpty(t *testing.T, n *cluster.Node, keep ...int) {
	t.Helper()
	var left []cluster.ProcInfo
	if !testutil.Poll(short, func() bool {
		ps, err := n.Procs()
		if err != nil {
			t.Fatal(err)
		}
		left = left[:0]
		for _, q := range ps {
			if q.NSPID != 1 && !contains(keep, q.NSPID) {
				left = append(left, q)
			}
		}
		return len(left) == 0
	}) {
		t.Errorf("node %s still holds more than its service: %+v", n, left)
	}
}
