package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/e2e/pgwire"
	"github.com/procmig/migrate/e2e/resp"
)

const pgPort = "5432"

// startPostgres initdb's a fresh PostgreSQL cluster (as user postgres),
// starts its postmaster on n listening on the service address (no unix
// socket: the nodes share the file system), and starts the client's load:
// over -conns connections, an INSERT of a new row and a SELECT count(*)
// (which must be the rows inserted) every -interval on each.
func startPostgres(ctx context.Context, b *bench, n *cluster.Node) (_ *workload, err error) {
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		return nil, errors.New("PostgreSQL is not installed (apt-get install postgresql; `make deps` does it)")
	}
	bin := filepath.Dir(bins[len(bins)-1])
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("no user postgres (the postgresql package makes it): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	root, err := os.MkdirTemp("", "migrate-bench-pg-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(root)
		}
	}()
	if err := os.Chown(root, uid, gid); err != nil {
		return nil, err
	}
	data := filepath.Join(root, "data")
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	hba := fmt.Sprintf("host all all %s trust\n", cluster.Subnet)
	f, err := os.OpenFile(filepath.Join(data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(hba)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	p, err := n.Start(cluster.StartOptions{Dir: root}, "setpriv", "--reuid", u.Uid, "--regid", u.Gid, "--clear-groups", "--",
		filepath.Join(bin, "postgres"), "-D", data, "-p", pgPort, "-c", "unix_socket_directories=",
		"-c", "listen_addresses="+b.c.VIP.String(), "-c", "fsync=off")
	if err != nil {
		return nil, err
	}
	w := &workload{proc: p, comm: "postgres", addr: net.JoinHostPort(b.c.VIP.String(), pgPort), settleFor: time.Second}
	w.cleanup = func() { os.RemoveAll(root) }
	defer func() {
		if err != nil {
			w.stop()
		}
	}()
	dial := func(ctx context.Context) (*pgwire.Conn, error) {
		nc, err := b.c.Client.Dial(ctx, "tcp", w.addr)
		if err != nil {
			return nil, err
		}
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		pc, err := pgwire.Connect(nc, "postgres", "postgres")
		if err != nil {
			return nil, err
		}
		nc.SetDeadline(time.Time{})
		pc.Timeout = 5 * time.Second
		return pc, nil
	}
	var admin *pgwire.Conn
	var last error
	if werr := waitFor(ctx, time.Minute, "PostgreSQL to accept connections", func() bool {
		admin, last = dial(ctx)
		return last == nil
	}); werr != nil {
		data, _ := os.ReadFile(p.Log)
		return nil, fmt.Errorf("%w: %v\n%s", werr, last, data)
	}
	defer admin.Close()
	if _, err := admin.Query("create table t(conn int, id int, primary key (conn, id))"); err != nil {
		return nil, err
	}
	load := &pgLoad{dial: dial, conns: *conns, every: *interval}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		load.run(lctx)
	}()
	w.load = load
	w.stopLoad = func() {
		cancel()
		<-done
	}
	w.verify = func(ctx context.Context) error {
		pc, err := dial(ctx)
		if err != nil {
			return err
		}
		defer pc.Close()
		// The load goes on: rows inserted before the count, and at most
		// one more a connection (in flight as it is read).
		before := load.inserted()
		v, err := pc.Value("select count(*) from t")
		if err != nil {
			return err
		}
		after := load.inserted()
		if got, err := strconv.Atoi(v); err != nil || got < before || got > after+max(load.conns, 1) {
			return fmt.Errorf("%s rows after the move, the client inserted %d to %d", v, before, after)
		}
		return nil
	}
	if err := load.WaitRequests(ctx, 100, 10*time.Second); err != nil {
		return nil, err
	}
	load.Window() // the start is not the steady state
	return w, nil
}

// pgLoad is the postgres scenario's client: conns connections, each an
// INSERT of its next row and a SELECT count(*) of its rows every every,
// the count checked. A failed request closes the connection; the next
// one dials again (and counts as an error).
type pgLoad struct {
	dial  func(context.Context) (*pgwire.Conn, error)
	conns int
	every time.Duration

	mu     sync.Mutex
	window resp.Stats
	total  resp.Stats
	rows   int // inserted, all connections
}

func (l *pgLoad) record(f func(*resp.Stats)) {
	l.mu.Lock()
	f(&l.window)
	l.mu.Unlock()
}

func (l *pgLoad) Window() resp.Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.window
	l.total.Add(w)
	l.window = resp.Stats{}
	return w
}

func (l *pgLoad) Total() resp.Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.total
	t.Add(l.window)
	return t
}

func (l *pgLoad) inserted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rows
}

func (l *pgLoad) WaitRequests(ctx context.Context, n int, maxWait time.Duration) error {
	return waitFor(ctx, maxWait, fmt.Sprintf("%d answers of the client", n), func() bool {
		return l.Total().Requests >= n
	})
}

func (l *pgLoad) run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range max(l.conns, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.conn(ctx, i)
		}()
	}
	wg.Wait()
}

// conn is the loop of connection i.
func (l *pgLoad) conn(ctx context.Context, i int) {
	var pc *pgwire.Conn
	defer func() {
		if pc != nil {
			pc.Close()
		}
	}()
	var last time.Time
	id := 0
	tick := time.NewTicker(max(l.every, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if pc == nil {
			var err error
			if pc, err = l.dial(ctx); err != nil {
				l.record(func(s *resp.Stats) { s.Errors++; s.LastErr = err })
				continue
			}
			l.record(func(s *resp.Stats) { s.Connects++ })
		}
		id++
		err := l.request(pc, i, id)
		now := time.Now()
		if !last.IsZero() {
			gap := now.Sub(last)
			l.record(func(s *resp.Stats) { s.MaxGap = max(s.MaxGap, gap) })
		}
		last = now
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			l.record(func(s *resp.Stats) { s.Errors++; s.LastErr = err })
			pc.Close()
			pc = nil
			continue
		}
		l.mu.Lock()
		l.window.Requests++
		l.rows++
		l.mu.Unlock()
	}
}

func (l *pgLoad) request(pc *pgwire.Conn, conn, id int) error {
	if _, err := pc.Query(fmt.Sprintf("insert into t values (%d, %d)", conn, id)); err != nil {
		return err
	}
	got, err := pc.Value(fmt.Sprintf("select count(*) from t where conn = %d", conn))
	if err != nil {
		return err
	}
	if got != strconv.Itoa(id) {
		return fmt.Errorf("connection %d: count(*) is %s after %d inserts", conn, got, id)
	}
	return nil
}
