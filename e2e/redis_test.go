package e2e

// redis-server from Debian's package survives a dump and a restore with
// its keys, its threads (bio_close_file, bio_aof_fsync, bio_lazy_free,
// jemalloc_bg_thd) and its ability to fork (BGSAVE, AOF rewrite). The test talks to
// redis with a tiny RESP client of its own.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procmig/migrate/internal/testutil"
	"github.com/procmig/migrate/source"
)

// resp is a connection to redis speaking RESP2.
type resp struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

// respError is an error reply ("-ERR ...").
type respError string

func (e respError) Error() string { return string(e) }

func dialRedis(addr string) (*resp, error) {
	c, err := net.DialTimeout("tcp", addr, short)
	if err != nil {
		return nil, err
	}
	return &resp{c: c, r: bufio.NewReaderSize(c, 1<<16), w: bufio.NewWriterSize(c, 1<<16)}, nil
}

// send queues a command (pipelining); flush sends what is queued.
func (c *resp) send(args ...string) {
	fmt.Fprintf(c.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(c.w, "$%d\r\n%s\r\n", len(a), a)
	}
}

func (c *resp) flush() error { return c.w.Flush() }

// read reads one reply: a string (simple or bulk), nil (null bulk or
// array), an int64, a []any, or a respError.
func (c *resp) read() (any, error) {
	c.c.SetReadDeadline(time.Now().Add(long))
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("resp: empty line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return respError(body), nil
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 || n > 512<<20 {
			return nil, fmt.Errorf("resp: bulk length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 || n > 1<<24 {
			return nil, fmt.Errorf("resp: array length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = c.read(); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("resp: reply %q", line)
}

// do sends one command and returns its reply; an error reply fails the
// test.
func (c *resp) do(t testing.TB, args ...string) any {
	t.Helper()
	c.send(args...)
	if err := c.flush(); err != nil {
		t.Fatalf("redis %s: %v", args[0], err)
	}
	v, err := c.read()
	if err != nil {
		t.Fatalf("redis %s: %v", args[0], err)
	}
	if e, ok := v.(respError); ok {
		t.Fatalf("redis %s: %s", strings.Join(args, " "), e)
	}
	return v
}

func (c *resp) str(t testing.TB, args ...string) string {
	t.Helper()
	v := c.do(t, args...)
	s, ok := v.(string)
	if !ok {
		t.Fatalf("redis %s: reply %#v, want a string", args[0], v)
	}
	return s
}

func (c *resp) int(t testing.TB, args ...string) int64 {
	t.Helper()
	v := c.do(t, args...)
	n, ok := v.(int64)
	if !ok {
		t.Fatalf("redis %s: reply %#v, want an integer", args[0], v)
	}
	return n
}

// info returns a field of INFO section.
func (c *resp) info(t testing.TB, section, key string) string {
	t.Helper()
	for _, l := range strings.Split(c.str(t, "INFO", section), "\r\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return v
		}
	}
	t.Fatalf("INFO %s has no %s", section, key)
	return ""
}

func (c *resp) Close() error { return c.c.Close() }

// redisServer returns the path of Debian's redis-server, or skips the test
// (fails it under CI: `make deps` installs it).
func redisServer(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		if _, err2 := os.Stat("/usr/bin/redis-server"); err2 != nil {
			testutil.Unavailable(t, "redis-server is not installed (apt-get install redis-server redis-tools; `make deps` does it): %v", err)
		}
		p = "/usr/bin/redis-server"
	}
	return p
}

// startRedis runs redis-server on 127.0.0.1:port, not saving, not
// daemonized, its log on its stdout (a file), with DEBUG allowed from
// loopback. It returns once redis answers PING.
func startRedis(t testing.TB, port int, dir string) *testutil.Proc {
	t.Helper()
	return startRedisWith(t, testutil.Options{Dir: dir}, port, dir)
}

// startRedisWith is startRedis with options (another user, say).
func startRedisWith(t testing.TB, o testutil.Options, port int, dir string) *testutil.Proc {
	t.Helper()
	p := testutil.StartWith(t, o, redisServer(t),
		"--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--logfile", "", "--dir", dir, "--enable-debug-command", "local")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testutil.WaitFor(t, long, "redis-server to answer", func() bool {
		if st, err := testutil.State(p.PID); err != nil || st == 'Z' {
			t.Fatalf("redis-server exited:\n%s", strings.Join(p.Lines(t), "\n"))
		}
		c, err := dialRedis(addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.send("PING")
		c.flush()
		v, err := c.read()
		return err == nil && v == "PONG"
	})
	return p
}

// redisState is what must be the same after a restore.
type redisState struct {
	dbsize int64
	digest string // DEBUG DIGEST: a hash of the whole data set
	sample string // SHA-256 of MGET of sampled keys
}

func (s redisState) String() string {
	return fmt.Sprintf("dbsize=%d digest=%s sample=%s", s.dbsize, s.digest, s.sample)
}

func readRedisState(t testing.TB, c *resp, sample []string) redisState {
	t.Helper()
	var s redisState
	s.dbsize = c.int(t, "DBSIZE")
	s.digest = c.str(t, "DEBUG", "DIGEST")
	h := sha256.New()
	for i := 0; i < len(sample); i += 100 {
		v := c.do(t, append([]string{"MGET"}, sample[i:min(i+100, len(sample))]...)...)
		vals, ok := v.([]any)
		if !ok {
			t.Fatalf("MGET: %#v", v)
		}
		for j, x := range vals {
			s, ok := x.(string)
			if !ok {
				t.Fatalf("MGET %s: %#v, want a value", sample[i+j], x)
			}
			fmt.Fprintf(h, "%s=%s\n", sample[i+j], s)
		}
	}
	s.sample = hex.EncodeToString(h.Sum(nil))
	return s
}

// benchSummary drops the progress lines redis-benchmark -q overwrites with
// carriage returns.
func benchSummary(out []byte) string {
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if i := strings.LastIndexByte(l, '\r'); i >= 0 {
			l = l[i+1:]
		}
		if l = strings.TrimSpace(l); l != "" {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "; ")
}

// redisThreads are the threads redis 7 runs beside its main one.
var redisThreads = []string{"bio_close_file", "bio_aof_fsync", "bio_lazy_free", "jemalloc_bg_thd"}

// TestProgramRedis: redis-server loaded with keys (redis-benchmark, DEBUG
// POPULATE and keys of every type, some with a TTL), no client connected,
// dumped and restored: a new client sees the same DBSIZE, DEBUG DIGEST and
// sample of values; redis keeps serving (SET/GET, a redis-benchmark run);
// its threads are all back with their TIDs, the lazy-free thread frees a
// big set after UNLINK, BGSAVE forks a child that writes a sound RDB
// file, and turning the append-only file on rewrites it (a fork) and
// appends and syncs writes (the bio threads).
//
// Subtests: a plain dump, and a pre-copy dump (uffd-wp, or what the kernel
// has) while redis runs.
func TestProgramRedis(t *testing.T) {
	testutil.RequireRoot(t)
	redisServer(t)
	t.Run("plain", func(t *testing.T) { runRedis(t, source.DumpOptions{}) })
	t.Run("pre-copy", func(t *testing.T) { runRedis(t, source.DumpOptions{PreCopy: true, Tracker: source.TrackerAuto}) })
}

func runRedis(t *testing.T, o source.DumpOptions) {
	work := t.TempDir()
	port := freeSocketPort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := startRedis(t, port, work)
	c, err := dialRedis(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Load: redis-benchmark's SETs (key:000000NNNNNN = "xxx"), DEBUG
	// POPULATE (pop:N = value:N), and keys with distinct values.
	sample := loadRedis(t, c, port)
	before := readRedisState(t, c, sample)
	t.Logf("before the dump: %s", before)
	if before.dbsize < 240000 {
		t.Fatalf("DBSIZE %d after loading, want more than 240000", before.dbsize)
	}
	lazyBefore, _ := strconv.Atoi(c.info(t, "memory", "lazyfreed_objects"))
	rss := testutil.StatusField(t, p.PID, "VmRSS")
	c.Close()
	waitSockets(t, p.PID, 1)

	threads := threadNames(t, p.PID)
	t.Logf("threads of redis: %v; RSS %s", threads, rss)
	for _, name := range redisThreads {
		tidNamed(t, threads, name)
	}
	fds := testutil.FDs(t, p.PID)
	dir, img, _ := dumpWith(t, p, o)
	for _, f := range img.Process.FDs {
		t.Logf("image fd %d: %s", f.FD, f.Kind)
	}

	r := restoreOK(t, dir, p.Log)
	checkFDsSame(t, fds, r.PID, 1, 2)
	if after := threadNames(t, r.PID); !maps.Equal(after, threads) {
		t.Errorf("threads after restore %v, before the dump %v", after, threads)
	}
	c, err = dialRedis(addr)
	if err != nil {
		t.Fatalf("connect to the restored redis: %v", err)
	}
	defer c.Close()
	if after := readRedisState(t, c, sample); after != before {
		t.Errorf("after restore %s\nbefore the dump %s", after, before)
	}
	if ttl := c.int(t, "TTL", "ttl"); ttl < 99000 || ttl > 100000 {
		t.Errorf("TTL of a key with 100000 s to live: %d after restore", ttl)
	}

	// It keeps serving.
	c.do(t, "SET", "after", "restore")
	if got := c.str(t, "GET", "after"); got != "restore" {
		t.Errorf("GET after: %q", got)
	}
	if got := c.int(t, "INCR", "counter"); got != 42 {
		t.Errorf("INCR counter: %d, want 42", got)
	}
	if bench, err := exec.LookPath("redis-benchmark"); err == nil {
		out, err := exec.Command(bench, "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-t", "set,get,incr,lpush,lpop", "-n", "20000", "-P", "16", "-q").CombinedOutput()
		if err != nil {
			t.Errorf("redis-benchmark after restore: %v\n%s", err, out)
		}
		t.Logf("redis-benchmark after restore: %s", benchSummary(out))
	}

	// The lazy-free thread frees a big set (more than 64 elements in a
	// hash table) that UNLINK hands it.
	for i := range 1000 {
		c.send("SADD", "bigset", fmt.Sprintf("member-%d", i))
	}
	c.flush()
	for range 1000 {
		if _, err := c.read(); err != nil {
			t.Fatal(err)
		}
	}
	c.do(t, "UNLINK", "bigset")
	testutil.WaitFor(t, short, "the bio_lazy_free thread to free the unlinked set", func() bool {
		n, _ := strconv.Atoi(c.info(t, "memory", "lazyfreed_objects"))
		return n > lazyBefore && c.info(t, "memory", "lazyfree_pending_objects") == "0"
	})

	// BGSAVE forks a child that writes the data set into redis's --dir.
	save := work
	if _, err := os.Stat(filepath.Join(save, "dump.rdb")); err == nil {
		t.Fatal("dump.rdb exists before BGSAVE")
	}
	saves, _ := strconv.Atoi(c.info(t, "persistence", "rdb_saves"))
	if got := c.str(t, "BGSAVE"); !strings.HasPrefix(got, "Background saving started") {
		t.Fatalf("BGSAVE: %q", got)
	}
	testutil.WaitFor(t, long, "BGSAVE to end", func() bool {
		n, _ := strconv.Atoi(c.info(t, "persistence", "rdb_saves"))
		return n > saves && c.info(t, "persistence", "rdb_bgsave_in_progress") == "0"
	})
	if st := c.info(t, "persistence", "rdb_last_bgsave_status"); st != "ok" {
		t.Errorf("rdb_last_bgsave_status:%s after restore", st)
	}
	rdb := filepath.Join(save, "dump.rdb")
	if fi, err := os.Stat(rdb); err != nil || fi.Size() < 1<<20 {
		t.Errorf("dump.rdb written by BGSAVE: %v (%v)", fi, err)
	}
	if check, err := exec.LookPath("redis-check-rdb"); err == nil {
		out, err := exec.Command(check, rdb).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "RDB looks OK") {
			t.Errorf("redis-check-rdb of the file the restored redis saved: %v\n%s", err, out)
		}
	}

	// Turning the append-only file on forks a rewrite; then the main thread
	// appends every write, bio_aof_fsync syncs the file every second and
	// bio_close_file closes the files the rewrite replaced.
	c.do(t, "CONFIG", "SET", "appendonly", "yes")
	testutil.WaitFor(t, long, "the AOF rewrite to end", func() bool {
		return c.info(t, "persistence", "aof_enabled") == "1" &&
			c.info(t, "persistence", "aof_rewrite_in_progress") == "0" &&
			c.info(t, "persistence", "aof_rewrite_scheduled") == "0"
	})
	if st := c.info(t, "persistence", "aof_last_bgrewrite_status"); st != "ok" {
		t.Errorf("aof_last_bgrewrite_status:%s", st)
	}
	c.do(t, "SET", "aof-key", "aof-value")
	time.Sleep(1500 * time.Millisecond) // appendfsync everysec
	if st := c.info(t, "persistence", "aof_last_write_status"); st != "ok" {
		t.Errorf("aof_last_write_status:%s", st)
	}
	aofs, _ := filepath.Glob(filepath.Join(save, "appendonlydir", "*.incr.aof"))
	var aof []byte
	for _, f := range aofs {
		b, _ := os.ReadFile(f)
		aof = append(aof, b...)
	}
	if !strings.Contains(string(aof), "aof-value") {
		t.Errorf("the append-only files %v do not hold the last write", aofs)
	}
	c.Close()
	testutil.RequireRunning(t, r.PID)
	// Every thread is still there; jemalloc may have started more
	// background threads under the load since (it does so on demand).
	end := threadNames(t, r.PID)
	for tid, name := range threads {
		if end[tid] != name {
			t.Errorf("thread %d (%s) is gone at the end: %v", tid, name, end)
		}
	}
	t.Logf("threads at the end: %v", end)
	r.Kill(t)
	for _, l := range r.Lines(t) {
		if strings.Contains(l, "REDIS BUG REPORT") || strings.Contains(l, "Guru Meditation") {
			t.Errorf("redis crashed:\n%s", strings.Join(r.Lines(t), "\n"))
			break
		}
	}
}

// TestProgramRedisClientConnected: with a client connected (an established
// TCP connection), redis is dumped to files (killed, its connection silent
// in repair mode, the network lock on) and restored: the client goes on on
// the same connection, with every key there, its own write included, and
// new clients are served too.
func TestProgramRedisClientConnected(t *testing.T) {
	testutil.RequireRoot(t)
	redisServer(t)
	port := freeSocketPort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := startRedis(t, port, t.TempDir())
	c, err := dialRedis(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.do(t, "DEBUG", "POPULATE", "10000")
	c.do(t, "SET", "mine", "before")
	testutil.WaitFor(t, short, "redis to hold the client's connection", func() bool {
		n, err := socketFDs(p.PID)
		return err == nil && n == 2
	})
	digest := c.str(t, "DEBUG", "DIGEST")

	dir, img := dumpKill(t, p, "")
	conns := 0
	for _, f := range img.Process.FDs {
		if f.Socket != nil && f.Socket.TCP != nil {
			conns++
		}
	}
	if conns != 1 {
		t.Errorf("the image holds %d TCP connections, want the client's one", conns)
	}
	r := restoreOK(t, dir, p.Log)
	defer r.Kill(t)
	// The same connection works: the keys are there, and writes go on.
	if got := c.str(t, "GET", "mine"); got != "before" {
		t.Errorf("GET on the connection open across the dump and restore: %q", got)
	}
	if got := c.str(t, "DEBUG", "DIGEST"); got != digest {
		t.Errorf("digest after the restore %s, before %s", got, digest)
	}
	c.do(t, "SET", "mine", "after")
	c2, err := dialRedis(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := c2.str(t, "GET", "mine"); got != "after" {
		t.Errorf("GET on a new connection: %q", got)
	}
	if got := c2.int(t, "DBSIZE"); got != 10001 {
		t.Errorf("DBSIZE %d, want 10001", got)
	}
	checkLockGone(t, img.NetLock)
}
