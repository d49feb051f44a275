// Command demo shows a live migration of redis between two nodes while a
// client uses it (`make demo`).
//
// It builds a cluster (package e2e/cluster: nodes A and B running `migrate
// serve`, a client node, a service address that moves with the process),
// starts redis-server on A with no persistence, fills it with keys, and
// runs a client on the client node that writes and reads a counter
// through the service address over one long-lived connection every few
// milliseconds, checking each reply. While it runs, redis moves from A to
// B. Then it checks that the service answers from B, the connection held,
// exactly one redis runs, and every key survived (DBSIZE and DEBUG DIGEST
// as before), and prints what happened, ending with one line:
//
//	demo: ok rounds=N downtime_ms=N client_max_gap_ms=N errors=N keys_before=N keys_after=N
//
// or "demo: FAILED ..." and exit status 1. Ctrl-C stops it; it cleans up
// on every exit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/e2e/resp"
)

var (
	migrateBin = flag.String("migrate", "bin/migrate", "the migrate `binary`")
	keys       = flag.Int("keys", 10000, "fill redis with `N` keys")
	interval   = flag.Duration("interval", 2*time.Millisecond, "the client's pause between two requests")
	ipv6       = flag.Bool("6", false, "the client uses the IPv6 service address")
	holdConn   = flag.Bool("hold-conn", true, "keep the client's one connection open across the migration; with false it closes it before the migration and connects again after (for a migrate that cannot move established TCP connections)")
	verbose    = flag.Bool("v", false, "print the commands the cluster runs, migrate's log, and the services' logs at the end")
	extra      = flag.String("migrate-flags", "", "more `FLAGS` for migrate --to (split at spaces), e.g. \"--bandwidth 50 -vv\"")
)

const port = "6379"

func main() {
	flag.Parse()
	closeOnExec()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	line, err := run(ctx) // cleans up before it returns
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("interrupted (%v)", err)
	}
	stop()
	if err != nil {
		fmt.Printf("demo: FAILED: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("demo: ok " + line)
}

// closeOnExec marks every fd this process inherited above stderr
// close-on-exec: redis must get only the fds the demo gives it (an
// inherited pipe, say from a CI runner, is an fd migrate refuses, rightly).
func closeOnExec() {
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

func say(format string, args ...any) { fmt.Printf("demo: "+format+"\n", args...) }

// summary is what the last line reports.
type summary struct {
	rounds                    int
	downtimeMS, targetMS      float64
	maxGapMS                  float64
	errors                    int
	keysBefore, keysAfter     int64
	digestBefore, digestAfter string
}

// run runs the demo and returns the summary (the part of the last line
// after "demo: ok "); it has cleaned up when it returns.
func run(ctx context.Context) (_ string, err error) {
	if os.Geteuid() != 0 {
		return "", errors.New("needs root (namespaces, ptrace, clone3 with a chosen PID)")
	}
	redis, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redis-server is needed (apt-get install redis-server): %w", err)
	}
	opts := cluster.Options{Migrate: *migrateBin}
	if *verbose {
		opts.Log = os.Stderr
		opts.ServeArgs = []string{"-v"}
	}
	say("building a cluster: nodes A and B with migrate serve, a client node, the service address on A")
	c, err := cluster.New(opts)
	if err != nil {
		return "", err
	}
	defer func() {
		if *verbose || err != nil {
			for _, n := range []*cluster.Node{c.A, c.B} {
				if b, rerr := os.ReadFile(n.ServeLog); rerr == nil {
					fmt.Fprintf(os.Stderr, "--- serve log of node %s:\n%s", n.Name, b)
				}
			}
		}
		say("cleaning up")
		if cerr := c.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("cleanup: %w", cerr)
		}
	}()
	vip := c.VIP.String()
	if *ipv6 {
		vip = c.VIP6.String()
	}
	addr := net.JoinHostPort(vip, port)
	say("A %s, B %s, client %s, service address %s and %s; the migration moves it: %v (in-process, --address: %v)", c.A.Addr, c.B.Addr, c.Client.Addr, c.VIP, c.VIP6, c.Hooks, c.Address)

	log := filepath.Join(c.Dir, "redis.log")
	p, err := c.A.Start(cluster.StartOptions{Log: log}, redis,
		"--port", port, "--bind", "0.0.0.0", "::", "--protected-mode", "no",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
		"--dir", c.Dir, "--enable-debug-command", "yes")
	if err != nil {
		return "", err
	}
	say("redis-server runs on A: pid %d there (%d on this machine)", p.NSPID, p.PID)

	admin, err := dialWait(ctx, c.Client, addr)
	if err != nil {
		b, _ := os.ReadFile(log)
		return "", fmt.Errorf("redis does not answer at %s: %w\n%s", addr, err, b)
	}
	var s summary
	if _, err := admin.Str("DEBUG", "POPULATE", strconv.Itoa(*keys), "key", "64"); err != nil {
		return "", err
	}
	if s.keysBefore, err = admin.Int("DBSIZE"); err != nil {
		return "", err
	}
	if s.digestBefore, err = admin.Str("DEBUG", "DIGEST"); err != nil {
		return "", err
	}
	mem, _ := admin.Info("memory", "used_memory_human")
	admin.Close()
	say("filled: %d keys (%s), digest %s", s.keysBefore, mem, s.digestBefore)

	cl := &client{node: c.Client, addr: addr}
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cl.run(cctx)
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	if err := cl.waitOps(ctx, 200); err != nil {
		return "", err
	}
	time.Sleep(500 * time.Millisecond)
	say("client on the client node: %s", cl.status())
	if !*holdConn {
		cl.pause()
		say("client paused, its connection closed (-hold-conn=false)")
	}

	say("migrating redis-server from A to B: migrate --to %s %d (on A)", c.B.ServeAddr, p.NSPID)
	res, merr := c.Migrate(ctx, c.A, c.B, p.NSPID, strings.Fields(*extra)...)
	if *verbose && res != nil {
		fmt.Fprintf(os.Stderr, "--- migrate's stderr:\n%s", res.Stderr)
	}
	if !*holdConn {
		cl.resume()
	}
	if merr != nil {
		cancel()
		wg.Wait()
		say("client: %s", cl.status())
		if res != nil {
			say("migrate said: %s", cluster.LastLine(res.Stderr))
		}
		return "", fmt.Errorf("migration: %w", merr)
	}
	s.rounds, s.downtimeMS, s.targetMS = len(res.Rounds), res.DowntimeMS, res.TargetDowntimeMS
	for _, r := range res.Rounds {
		what := "pre-copy"
		if r.Frozen {
			what = "final, frozen"
		}
		say("  round %d (%s): %d pages sent, %s raw, %s on the wire, %.1f ms", r.Round, what, r.PagesSent, human(r.BytesRaw), human(r.BytesWire), r.MS)
	}
	say("migrated: outcome %s, %d rounds, %s on the wire (%s raw, RSS %s), downtime %.1f ms (the target's own measure %.1f ms), total %.1f ms, tracker %s, codec %s; the VIP moved by %s",
		res.Outcome, s.rounds, human(res.BytesWire), human(res.BytesRaw), human(res.RSSBytes), res.DowntimeMS, res.TargetDowntimeMS, res.TotalMS, res.Tracker, res.Codec, res.VIPMovedBy)

	// The client goes on a while against B.
	ops := cl.snapshot().ops
	if err := cl.waitOps(ctx, ops+200); err != nil {
		return "", err
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	wg.Wait()
	st := cl.snapshot()
	s.maxGapMS, s.errors = float64(st.maxGap.Microseconds())/1000, st.errors
	say("client: %s", cl.status())

	// Exactly one redis, on B, with the same PID there; the service
	// address on B.
	locs, err := c.Locate("redis-server", p.NSPID)
	if err != nil {
		return "", err
	}
	if len(locs) != 1 || locs[0].Node != c.B {
		return "", fmt.Errorf("redis-server with pid %d runs %d times (%v), want once, on B", p.NSPID, len(locs), locs)
	}
	if holders, err := c.VIPHolders(); err != nil || len(holders) != 1 || holders[0] != c.B {
		return "", fmt.Errorf("the service address is on %v (%v), want B", holders, err)
	}
	say("one redis-server runs, on B (pid %d there, %d on this machine)", locs[0].NSPID, locs[0].PID)

	// Every key survived: the client's counter holds the last value it
	// wrote; without it, the data set is the one before.
	admin, err = dialWait(ctx, c.Client, addr)
	if err != nil {
		return "", err
	}
	defer admin.Close()
	if pid, err := admin.Info("server", "process_id"); err != nil || pid != strconv.Itoa(p.NSPID) {
		return "", fmt.Errorf("the service address reaches redis process %s (%v), want %d", pid, err, p.NSPID)
	}
	got, err := admin.Str("GET", "counter")
	if err != nil {
		return "", err
	}
	if got != strconv.FormatInt(st.last, 10) {
		return "", fmt.Errorf("counter is %q after the migration, the client last wrote %d", got, st.last)
	}
	if _, err := admin.Int("DEL", "counter"); err != nil {
		return "", err
	}
	if s.keysAfter, err = admin.Int("DBSIZE"); err != nil {
		return "", err
	}
	if s.digestAfter, err = admin.Str("DEBUG", "DIGEST"); err != nil {
		return "", err
	}
	say("after: %d keys, digest %s (the client's counter, %s, removed first)", s.keysAfter, s.digestAfter, got)
	line := fmt.Sprintf("rounds=%d downtime_ms=%.0f client_max_gap_ms=%.0f errors=%d keys_before=%d keys_after=%d",
		s.rounds, s.downtimeMS, s.maxGapMS, s.errors, s.keysBefore, s.keysAfter)
	switch {
	case s.keysAfter != s.keysBefore || s.digestAfter != s.digestBefore:
		return "", fmt.Errorf("the data set changed: %s digest before %s after %s", line, s.digestBefore, s.digestAfter)
	case s.errors > 0:
		return "", fmt.Errorf("the client saw errors: %s (last: %v)", line, st.lastErr)
	}
	return line, nil
}

// dialWait connects to addr from node n once redis answers PING (up to
// 10 s).
func dialWait(ctx context.Context, n *cluster.Node, addr string) (*resp.Conn, error) {
	c, err := resp.DialReady(ctx, func(ctx context.Context) (net.Conn, error) { return n.Dial(ctx, "tcp", addr) }, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to redis at %s: %w", addr, err)
	}
	return c, nil
}

func human(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}
