package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
)

const nginxPort = "8080"

// nginxBody is the file the nginx scenario's client fetches (23 KB).
var nginxBody = []byte(strings.Repeat("moved live between two nodes with its workers\n", 500))

// startNginx starts nginx as Debian runs it (a master as root, 2 workers
// as www-data) on n, serving one file on the service address, and the
// client's load: over -conns keep-alive connections (each to whichever
// worker accepts it), a GET of the file every -interval on each, the
// body checked.
func startNginx(ctx context.Context, b *bench, n *cluster.Node) (*workload, error) {
	return startNginxWith(ctx, b, n, true)
}

// startNginxSingle starts the same nginx as one process (master_process
// off: it serves as the root it was started as, no workers), for the
// nginx tree's downtime next to one process doing the same work with the
// same resident memory (nginx1Connections).
func startNginxSingle(ctx context.Context, b *bench, n *cluster.Node) (*workload, error) {
	return startNginxWith(ctx, b, n, false)
}

// nginx1Connections is the single nginx's worker_connections: the arrays
// of connections and events it allocates and links at the start (about
// 420 bytes a connection) bring its resident memory from 7 MiB to the
// tree's 15 (master and 2 workers with 256 each). The tree's target is
// a downtime within twice that of one process of the same memory size:
// this one runs the same program for the same client. (Beyond the
// 1024 fds of its rlimit nginx warns in its log, and serves on.)
const nginx1Connections = 20000

func startNginxWith(ctx context.Context, b *bench, n *cluster.Node, tree bool) (_ *workload, err error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/nginx"); err != nil {
			return nil, errors.New("nginx is not installed (apt-get install nginx-light; `make deps` does it)")
		}
	}
	if _, err := user.Lookup("www-data"); err != nil {
		return nil, fmt.Errorf("no user www-data (Debian's base-passwd makes it): %w", err)
	}
	work, err := os.MkdirTemp("", "migrate-bench-nginx-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(work)
		}
	}()
	// www-data reads the file (MkdirTemp's mode is root's alone).
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(work, "www"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(work, "www", "index.html"), nginxBody, 0o644); err != nil {
		return nil, err
	}
	procs, wconns := "user www-data;\nworker_processes 2;", 256
	if !tree {
		procs, wconns = "master_process off;", nginx1Connections
	}
	conf := fmt.Sprintf(`%[3]s
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections %[4]d; }
http {
	access_log off;
	keepalive_requests 1000000;
	keepalive_timeout 600s;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen %[2]s;
		root %[1]s/www;
	}
}
`, work, net.JoinHostPort(b.c.VIP.String(), nginxPort), procs, wconns)
	confPath := filepath.Join(work, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := n.Start(cluster.StartOptions{Dir: work}, bin, "-p", work, "-e", filepath.Join(work, "error.log"), "-c", confPath)
	if err != nil {
		return nil, err
	}
	w := &workload{proc: p, comm: "nginx", addr: net.JoinHostPort(b.c.VIP.String(), nginxPort), settleFor: time.Second}
	w.cleanup = func() { os.RemoveAll(work) }
	defer func() {
		if err != nil {
			w.stop()
		}
	}()
	dial := func(ctx context.Context) (*httpConn, error) {
		nc, err := b.c.Client.Dial(ctx, "tcp", w.addr)
		if err != nil {
			return nil, err
		}
		return &httpConn{nc: nc, br: bufio.NewReader(nc)}, nil
	}
	var last error
	if werr := waitFor(ctx, time.Minute, "nginx to answer", func() bool {
		c, err := dial(ctx)
		if err == nil {
			err = c.get(0, 0)
			c.Close()
		}
		last = err
		return err == nil
	}); werr != nil {
		data, _ := os.ReadFile(filepath.Join(work, "error.log"))
		return nil, fmt.Errorf("%w: %v\n%s", werr, last, data)
	}
	load := &reqLoad[*httpConn]{dial: dial, request: (*httpConn).get, conns: *conns, every: *interval}
	w.startLoad(ctx, load)
	w.verify = func(ctx context.Context) error {
		c, err := dial(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.get(0, 0)
	}
	if err := w.steady(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

// httpConn is a keep-alive HTTP/1.1 connection to nginx.
type httpConn struct {
	nc net.Conn
	br *bufio.Reader
}

func (c *httpConn) Close() error { return c.nc.Close() }

// get fetches the scenario's file over c and checks it.
func (c *httpConn) get(_, _ int) error {
	c.nc.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.nc.SetDeadline(time.Time{})
	if _, err := io.WriteString(c.nc, "GET /index.html HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
		return err
	}
	res, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK || !bytes.Equal(body, nginxBody) {
		return fmt.Errorf("GET /index.html: %s, %d bytes (want 200 OK, %d bytes)", res.Status, len(body), len(nginxBody))
	}
	return nil
}
