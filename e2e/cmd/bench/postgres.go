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
	"syscall"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
	"github.com/procmig/migrate/e2e/pgwire"
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
	load := &reqLoad[*pgwire.Conn]{dial: dial, request: pgRequest, conns: *conns, every: *interval}
	w.startLoad(ctx, load)
	w.verify = func(ctx context.Context) error {
		pc, err := dial(ctx)
		if err != nil {
			return err
		}
		defer pc.Close()
		// The load goes on: rows inserted before the count, and at most
		// one more a connection (in flight as it is read).
		before := load.answered()
		v, err := pc.Value("select count(*) from t")
		if err != nil {
			return err
		}
		after := load.answered()
		if got, err := strconv.Atoi(v); err != nil || got < before || got > after+max(load.conns, 1) {
			return fmt.Errorf("%s rows after the move, the client inserted %d to %d", v, before, after)
		}
		return nil
	}
	if err := w.steady(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

// pgRequest is one request of the postgres scenario's connection conn:
// an INSERT of its row id and a SELECT count(*) of its rows, which must
// be id.
func pgRequest(pc *pgwire.Conn, conn, id int) error {
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
