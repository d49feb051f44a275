package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/osthread"
)

// Node is one node of the cluster.
type Node struct {
	// Name is "a", "b" or "client".
	Name string
	// NetNS is the node's network namespace (under /run/netns).
	NetNS string
	// Addr and Addr6 are the node's own addresses on eth0.
	Addr, Addr6 netip.Addr
	// MAC is eth0's link-layer address.
	MAC net.HardwareAddr
	// ServePID is the PID of the node's `migrate serve` as the machine
	// (the root PID namespace) sees it; it is PID 1 of the node's PID
	// namespace. Zero on the client, and while the service is down.
	ServePID int
	// ServeAddr is where the service listens (HOST:PORT); empty on the
	// client.
	ServeAddr string
	// ServeLog is the file the current service writes its output to.
	ServeLog string

	c       *Cluster
	port    string // the switch's side of the node's veth pair
	pidBase int    // the node's PIDs start above this
	serve   *exec.Cmd
	served  chan struct{} // closed once serve's Wait returned
	serveN  int
}

// agent says whether the node runs a service (A and B).
func (n *Node) agent() bool { return n.pidBase > 0 }

// String returns the node's name.
func (n *Node) String() string { return n.Name }

// StartServe starts the node's `migrate serve` as PID 1 of a new PID (and
// mount) namespace inside the node's network namespace, and waits until it
// listens. New starts it; after KillServe, StartServe starts a new one
// (ServePID, ServeLog and the node's PID namespace change).
func (n *Node) StartServe() error {
	c := n.c
	if !n.agent() {
		return fmt.Errorf("node %s runs no service", n.Name)
	}
	if n.serve != nil {
		return fmt.Errorf("node %s: the service runs already (pid %d)", n.Name, n.ServePID)
	}
	n.serveN++
	n.ServeLog = filepath.Join(c.Dir, fmt.Sprintf("serve-%s-%d.log", n.Name, n.serveN))
	log, err := os.Create(n.ServeLog)
	if err != nil {
		return err
	}
	defer log.Close()
	// An IPC namespace of its own too: each node has its own System V
	// segments, as another host would.
	args := []string{"netns", "exec", n.NetNS, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc",
		c.MigrateBin, "serve", "--listen", n.ServeAddr, "--secret-file", c.SecretFile}
	if c.Hooks {
		args = append(args, c.serveHooks(n)...)
	}
	args = append(args, c.opts.ServeArgs...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = log, log
	c.logf("node %s: ip %s", n.Name, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node %s: start the service: %w", n.Name, err)
	}
	n.serve, n.served = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		close(n.served)
	}()
	// ip execs unshare, whose one child is the service.
	exited := func() bool {
		select {
		case <-n.served:
			return true
		default:
			return false
		}
	}
	var up bool
	poll(15*time.Second, func() bool {
		if exited() {
			return true
		}
		if n.ServePID == 0 {
			if kids := children(cmd.Process.Pid); len(kids) == 1 {
				n.ServePID = kids[0]
			}
		}
		b, _ := os.ReadFile(n.ServeLog)
		up = n.ServePID != 0 && bytes.Contains(b, []byte("listening on "))
		return up
	})
	if !up {
		b, _ := os.ReadFile(n.ServeLog)
		n.KillServe()
		return fmt.Errorf("node %s: the service did not start listening: %s", n.Name, bytes.TrimSpace(b))
	}
	c.logf("node %s: serve pid %d listens on %s", n.Name, n.ServePID, n.ServeAddr)
	// The node's PIDs go on from its own base.
	if out, err := n.Command("sh", "-c", fmt.Sprintf("echo %d > /proc/sys/kernel/ns_last_pid", n.pidBase)).CombinedOutput(); err != nil {
		n.KillServe()
		return fmt.Errorf("node %s: set ns_last_pid: %w: %s", n.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// KillServe kills the node's service with SIGKILL, which ends every
// process of the node's PID namespace, and waits until it is gone. It
// does nothing if the service is not running.
func (n *Node) KillServe() error {
	if n.serve == nil {
		return nil
	}
	cmd, pid := n.serve, n.ServePID
	n.serve, n.ServePID = nil, 0
	select {
	case <-n.served:
	default:
		// Only while it is still unshare's child: the PID is the
		// service's and no one else's.
		if pid != 0 {
			if pp, err := parent(pid); err == nil && pp == cmd.Process.Pid {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	select {
	case <-n.served:
		return nil
	case <-time.After(10 * time.Second):
	}
	// unshare did not end with its child: end it, and so the child.
	cmd.Process.Kill()
	select {
	case <-n.served:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("node %s: the service (pid %d) did not end", n.Name, pid)
	}
}

// RestartServe kills the node's service (and so every process of the
// node) and starts a new one.
func (n *Node) RestartServe() error {
	if err := n.KillServe(); err != nil {
		return err
	}
	return n.StartServe()
}

// Command returns a command that runs inside the node: in the network, PID,
// mount and IPC namespaces of its service (nsenter, which forks; the program is
// its child), or in the client's network namespace (ip netns exec, which
// execs the program). On an agent node whose service is down, the command
// fails to start.
func (n *Node) Command(name string, args ...string) *exec.Cmd {
	return n.command("", name, args...)
}

func (n *Node) command(dir, name string, args ...string) *exec.Cmd {
	if !n.agent() {
		cmd := exec.Command("ip", append([]string{"netns", "exec", n.NetNS, name}, args...)...)
		cmd.Dir = dir
		return cmd
	}
	pre := []string{"-t", strconv.Itoa(n.ServePID), "-n", "-p", "-m", "-i"}
	if dir != "" {
		pre = append(pre, "--wdns="+dir)
	}
	cmd := exec.Command("nsenter", append(append(pre, "--", name), args...)...)
	if n.ServePID == 0 {
		cmd.Err = fmt.Errorf("node %s: its service is down: no namespaces to enter", n.Name)
	}
	return cmd
}

// StartOptions configure Node.Start.
type StartOptions struct {
	// Log is the file the process's stdout and stderr are appended to
	// (created if needed); default: a new file in the cluster's directory.
	Log string
	// Dir is the working directory (default: the cluster's directory).
	Dir string
	// Env is the environment (default: PATH and LC_ALL=C).
	Env []string
	// PID, if not zero, is the PID the process must have in the node (on
	// an agent node: its PID namespace is quiet, and ns_last_pid is set
	// just before the start; a few attempts are made).
	PID int
}

// Proc is a process started on a node by Node.Start.
type Proc struct {
	Node *Node
	// PID is the process's PID as the machine sees it, NSPID as the node
	// sees it (the same on the client).
	PID, NSPID int
	// Log is its stdout and stderr.
	Log string

	cmd  *exec.Cmd // nsenter, the process's parent (or the process, on the client)
	done chan struct{}
	err  error
}

// Start starts name with args on the node, stdin on /dev/null and stdout
// and stderr appended to a log file, and returns once its PID is known.
// The process is a child of nsenter (of the calling process on the
// client), which reaps it: when it ends, or is killed by a migration, Done
// is closed. Close stops it if the caller did not.
func (n *Node) Start(o StartOptions, name string, args ...string) (*Proc, error) {
	if o.PID == 0 {
		return n.start(o, name, args...)
	}
	if !n.agent() {
		return nil, fmt.Errorf("node %s: no PID namespace of its own to choose a PID in", n.Name)
	}
	for attempt := 0; attempt < 5; attempt++ {
		set := n.Command("sh", "-c", fmt.Sprintf("echo %d > /proc/sys/kernel/ns_last_pid", o.PID-1))
		if out, err := set.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("node %s: set ns_last_pid: %w: %s", n.Name, err, bytes.TrimSpace(out))
		}
		p, err := n.start(o, name, args...)
		if err != nil || p.NSPID == o.PID {
			return p, err
		}
		n.c.logf("node %s: wanted pid %d, got %d; again", n.Name, o.PID, p.NSPID)
		p.Stop()
	}
	return nil, fmt.Errorf("node %s: could not start %s with pid %d", n.Name, name, o.PID)
}

func (n *Node) start(o StartOptions, name string, args ...string) (*Proc, error) {
	c := n.c
	if o.Dir == "" {
		o.Dir = c.Dir
	}
	if o.Env == nil {
		o.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	}
	if o.Log == "" {
		f, err := os.CreateTemp(c.Dir, filepath.Base(name)+"-*.log")
		if err != nil {
			return nil, err
		}
		o.Log = f.Name()
		f.Close()
	}
	log, err := os.OpenFile(o.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := n.command(o.Dir, name, args...)
	cmd.Env = o.Env
	cmd.Stdout, cmd.Stderr = log, log // files: the process gets them as they are
	// A session of its own, as a service has: no controlling terminal
	// (the one of a `make demo` run in a terminal would be refused), and a
	// process group it leads.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("node %s: start %s: %w", n.Name, name, err)
	}
	p := &Proc{Node: n, Log: o.Log, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := c.track(p); err != nil {
		p.Stop()
		return nil, err
	}
	if !n.agent() {
		p.PID, p.NSPID = cmd.Process.Pid, cmd.Process.Pid
		return p, nil
	}
	// nsenter forks once; its child is the process (once exec'd).
	ok := poll(10*time.Second, func() bool {
		select {
		case <-p.done:
			return true
		default:
		}
		kids := children(cmd.Process.Pid)
		if len(kids) != 1 {
			return false
		}
		ns, err := nsPID(kids[0])
		if err != nil {
			return false
		}
		p.PID, p.NSPID = kids[0], ns
		return true
	})
	if !ok || p.PID == 0 {
		p.Stop()
		b, _ := os.ReadFile(o.Log)
		return nil, fmt.Errorf("node %s: %s did not start (%v): %s", n.Name, name, p.err, bytes.TrimSpace(b))
	}
	c.logf("node %s: started %s: pid %d (%d on the node)", n.Name, name, p.PID, p.NSPID)
	return p, nil
}

// Done is closed once the process has ended and was reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the wait status, as an error, once Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Running says whether the process is alive (not a zombie).
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
	}
	st, err := state(p.PID)
	return err == nil && st != 'Z'
}

// Stop kills the process (by PID, while it is still the one started) and
// waits until it has been reaped. It may be called more than once.
func (p *Proc) Stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if p.PID != 0 {
		if p.PID == p.cmd.Process.Pid {
			p.cmd.Process.Kill()
		} else if pp, err := parent(p.PID); err == nil && pp == p.cmd.Process.Pid {
			unix.Kill(p.PID, unix.SIGKILL)
		}
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	p.cmd.Process.Kill() // nsenter, stuck
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("node %s: process %d did not end", p.Node.Name, p.PID)
	}
}

// ProcInfo describes a process found on a node.
type ProcInfo struct {
	PID   int  // as the machine sees it
	NSPID int  // as the node sees it
	PPID  int  // as the machine sees it (0 for a PID 1)
	State byte // of /proc/PID/stat: 'R', 'S', 't', 'Z', ...
	Comm  string
}

// Procs lists the processes of the node: on an agent node those of its PID
// namespace (the service and what runs under it), on the client those of
// its network namespace.
func (n *Node) Procs() ([]ProcInfo, error) {
	want, err := nsInode("/run/netns/" + n.NetNS)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []ProcInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || ino != want {
			continue
		}
		levels, err := nsPIDs(pid)
		if err != nil || (n.agent() && len(levels) < 2) {
			continue // gone, or nsenter and ip themselves
		}
		f, err := statFields(pid)
		if err != nil {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		out = append(out, ProcInfo{PID: pid, NSPID: levels[len(levels)-1], PPID: pp, State: f[0][0], Comm: comm(pid)})
	}
	return out, nil
}

// Find returns the processes of the node named comm (zombies included).
func (n *Node) Find(comm string) ([]ProcInfo, error) {
	all, err := n.Procs()
	var out []ProcInfo
	for _, p := range all {
		if p.Comm == comm {
			out = append(out, p)
		}
	}
	return out, err
}

// Do runs f on a goroutine locked to an OS thread that is in the node's
// network namespace: sockets f creates belong to the node. If the thread
// cannot return to its namespace, it stays locked and dies with the
// goroutine.
func (n *Node) Do(f func() error) error {
	errc := make(chan error, 1)
	osthread.Go(func() { // never the main thread: see osthread
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		ns, err := os.Open("/run/netns/" + n.NetNS)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns to %s: %w", n.NetNS, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back from %s: %w", n.NetNS, err))
			return // still locked: the thread ends with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	})
	return <-errc
}

// Dial connects from the node (see net.Dialer.DialContext).
func (n *Node) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Listen listens on the node (see net.Listen).
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// CutLink takes the switch's side of the node's link down, as if its
// cable were pulled: nothing reaches the node or leaves it, and neither
// end sees a reset.
func (c *Cluster) CutLink(n *Node) error {
	return c.run("ip", "-n", c.sw, "link", "set", n.port, "down")
}

// RestoreLink brings the node's link back up.
func (c *Cluster) RestoreLink(n *Node) error {
	return c.run("ip", "-n", c.sw, "link", "set", n.port, "up")
}

// Located is a process found on some node.
type Located struct {
	Node *Node
	ProcInfo
}

// Locate returns the live (not zombie) processes named comm with PID
// nspid in their node, on any node of the cluster.
func (c *Cluster) Locate(comm string, nspid int) ([]Located, error) {
	var out []Located
	var errs []error
	for _, n := range []*Node{c.A, c.B, c.Client} {
		ps, err := n.Find(comm)
		errs = append(errs, err)
		for _, p := range ps {
			if p.NSPID == nspid && p.State != 'Z' {
				out = append(out, Located{Node: n, ProcInfo: p})
			}
		}
	}
	return out, errors.Join(errs...)
}

// nsInode returns the inode of a namespace file.
func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// nsPIDs returns the NSpid line of /proc/PID/status: the PID in each PID
// namespace, outermost first.
func nsPIDs(pid int) ([]int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			var out []int
			for _, f := range strings.Fields(v) {
				n, err := strconv.Atoi(f)
				if err != nil {
					return nil, fmt.Errorf("/proc/%d/status: NSpid %q", pid, v)
				}
				out = append(out, n)
			}
			if len(out) > 0 {
				return out, nil
			}
		}
	}
	return nil, fmt.Errorf("/proc/%d/status has no NSpid", pid)
}

// nsPID returns pid's PID in its innermost PID namespace.
func nsPID(pid int) (int, error) {
	l, err := nsPIDs(pid)
	if err != nil {
		return 0, err
	}
	return l[len(l)-1], nil
}

// netInterface returns the link-layer address of the named interface of
// the calling thread's network namespace.
func netInterface(name string) (net.HardwareAddr, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	return ifc.HardwareAddr, nil
}
