package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Result is the report of `migrate --to --json` (see cmd/migrate), with
// what the command printed and how it ended.
type Result struct {
	PID              int     `json:"pid"`
	Comm             string  `json:"comm"`
	Target           string  `json:"target"`
	Session          string  `json:"session"`
	Outcome          string  `json:"outcome"`
	Tracker          string  `json:"tracker"`
	Codec            string  `json:"codec"`
	Rounds           []Round `json:"rounds"`
	Pages            uint64  `json:"pages"`
	BytesRaw         uint64  `json:"bytes_raw"`
	BytesWire        uint64  `json:"bytes_wire"`
	RSSBytes         uint64  `json:"rss_bytes"`
	Processes        int     `json:"processes"`
	TotalMS          float64 `json:"total_ms"`
	DowntimeMS       float64 `json:"downtime_ms"`
	TargetDowntimeMS float64 `json:"target_downtime_ms"`
	// SyncBytes is what the stream of the files copied with --sync
	// carried.
	SyncBytes int64 `json:"sync_bytes"`
	// FrozenSteps and TargetSteps are where the downtime went, on each
	// side.
	FrozenSteps []Step `json:"frozen_steps"`
	TargetSteps []Step `json:"target_steps"`
	// Renumbered are the container's processes and threads the target
	// gave other PIDs outside it (theirs were taken there): the source's
	// PID and the target's.
	Renumbered []struct {
		PID       int `json:"pid"`
		TargetPID int `json:"target_pid"`
	} `json:"renumbered"`
	// Error and Refused are a failed migration's message and, for a
	// refusal, its kind ("pid-in-use", ...).
	Error   string `json:"error"`
	Refused string `json:"refused"`

	// Stdout and Stderr are what migrate printed; Stdout held the report.
	Stdout, Stderr string `json:"-"`
	// ExitCode is migrate's exit status (-1 if a signal ended it).
	ExitCode int `json:"-"`
	// MaxRSSKiB is the peak resident memory of migrate (the largest of
	// the processes of its command: nsenter, migrate), from its rusage.
	MaxRSSKiB int64 `json:"-"`
	// VIPMovedBy says who moved the VIP to the target: "hooks",
	// "harness" (Cluster.Hooks false), or "" (it was not moved).
	VIPMovedBy string `json:"-"`
}

// Step is a step of the downtime and its milliseconds.
type Step struct {
	Name string  `json:"name"`
	MS   float64 `json:"ms"`
}

// Round is one round of the report.
type Round struct {
	Round      int     `json:"round"`
	PagesDirty uint64  `json:"pages_dirty"`
	PagesSent  uint64  `json:"pages_sent"`
	BytesRaw   uint64  `json:"bytes_raw"`
	BytesWire  uint64  `json:"bytes_wire"`
	MS         float64 `json:"ms"`
	HeldMS     float64 `json:"held_ms"`
	MaxHoldMS  float64 `json:"max_hold_ms"`
	Throttle   float64 `json:"throttle,omitempty"`
	Frozen     bool    `json:"frozen"`
	Stop       string  `json:"stop,omitempty"`
	EstimateMS float64 `json:"estimate_ms,omitempty"`
}

// ExitError is a migrate command that did not succeed.
type ExitError struct {
	Code   int    // exit status; -1 if a signal ended it
	Stderr string // all it wrote on stderr
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("migrate exited with status %d: %s", e.Code, LastLine(e.Stderr))
}

// LastLine returns the last non-empty line of s: where a migrate command
// says why it failed ("migrate: to: ...").
func LastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return ""
}

// Migration is a `migrate --to` running on a node.
type Migration struct {
	From, To *Node
	NSPID    int

	c      *Cluster
	cmd    *exec.Cmd // nsenter; migrate is its child
	stdout syncBuffer
	stderr syncBuffer
	done   chan struct{}
	err    error // of cmd.Wait
}

// Migrate moves the process with PID nspid on node from to node to:
// `migrate --to TO --json --secret-file F [hooks] EXTRA... NSPID`, run
// inside from. It returns the parsed report and an *ExitError if migrate
// did not exit 0 (with the Result all the same: a failed migration may
// report too). Cancelling ctx sends migrate SIGTERM (it then rolls back).
func (c *Cluster) Migrate(ctx context.Context, from, to *Node, nspid int, extra ...string) (*Result, error) {
	m, err := c.StartMigration(ctx, from, to, nspid, extra...)
	if err != nil {
		return nil, err
	}
	return m.Wait()
}

// StartMigration is Migrate without the wait: the caller can watch
// migrate's stderr (WaitStderr; pass "-vv" in extra for its debug log)
// while it runs, then Wait.
func (c *Cluster) StartMigration(ctx context.Context, from, to *Node, nspid int, extra ...string) (*Migration, error) {
	if !from.agent() || !to.agent() {
		return nil, fmt.Errorf("migrate from %s to %s: both must be agent nodes", from, to)
	}
	args := []string{"--to", to.ServeAddr, "--json", "--secret-file", c.SecretFile}
	if c.Hooks {
		args = append(args, c.sourceHooks(from)...)
	}
	args = append(append(args, extra...), strconv.Itoa(nspid))
	m := &Migration{From: from, To: to, NSPID: nspid, c: c, done: make(chan struct{})}
	cmd := from.Command(c.MigrateBin, args...)
	cmd.Stdout, cmd.Stderr = &m.stdout, &m.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 10 * time.Second // hooks' children holding the pipes
	m.cmd = cmd
	c.logf("node %s: migrate %s", from.Name, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("node %s: start migrate: %w", from.Name, err)
	}
	c.mu.Lock()
	closed := c.closed
	c.migrations = append(c.migrations, m)
	c.mu.Unlock()
	go func() {
		m.err = cmd.Wait()
		close(m.done)
	}()
	if closed {
		m.stop()
		return nil, errors.New("cluster: closed")
	}
	// Cancelling ctx asks migrate (not nsenter, which would leave it
	// running) to stop: SIGTERM rolls a migration back.
	go func() {
		select {
		case <-m.done:
		case <-ctx.Done():
			m.signal(unix.SIGTERM)
		}
	}()
	return m, nil
}

// signal sends sig to migrate itself, nsenter's child.
func (m *Migration) signal(sig unix.Signal) {
	for _, kid := range children(m.cmd.Process.Pid) {
		select {
		case <-m.done:
			return
		default:
			unix.Kill(kid, sig)
		}
	}
}

// stop ends the migration: SIGTERM, then SIGKILL after 10 s.
func (m *Migration) stop() error {
	select {
	case <-m.done:
		return nil
	default:
	}
	m.signal(unix.SIGTERM)
	select {
	case <-m.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	m.signal(unix.SIGKILL)
	select {
	case <-m.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("node %s: migrate did not end", m.From.Name)
	}
}

// Done is closed when migrate has exited.
func (m *Migration) Done() <-chan struct{} { return m.done }

// Stderr returns what migrate wrote on stderr so far.
func (m *Migration) Stderr() string { return m.stderr.String() }

// WaitStderr waits until migrate's stderr contains s. It fails if migrate
// exits first or ctx ends.
func (m *Migration) WaitStderr(ctx context.Context, s string) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		if strings.Contains(m.stderr.String(), s) {
			return nil
		}
		select {
		case <-m.done:
			if strings.Contains(m.stderr.String(), s) {
				return nil
			}
			return fmt.Errorf("migrate exited before writing %q: %s", s, LastLine(m.stderr.String()))
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q from migrate: %w", s, ctx.Err())
		case <-t.C:
		}
	}
}

// Wait waits for migrate to exit and returns its result (see Migrate).
// Without hooks, it moves the VIP to the target once the target runs the
// process, if the source held it.
func (m *Migration) Wait() (*Result, error) {
	<-m.done
	c := m.c
	r := &Result{Stdout: m.stdout.String(), Stderr: m.stderr.String()}
	if ps := m.cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			r.MaxRSSKiB = ru.Maxrss
		}
	}
	var perr error
	if out := bytes.TrimSpace([]byte(r.Stdout)); len(out) > 0 {
		perr = json.Unmarshal(out, r)
	}
	var ee *exec.ExitError
	switch {
	case m.err == nil:
	case errors.As(m.err, &ee):
		r.ExitCode = ee.ExitCode()
	default:
		return r, fmt.Errorf("node %s: migrate: %w", m.From.Name, m.err)
	}
	c.logf("node %s: migrate exited %d: %s", m.From.Name, r.ExitCode, LastLine(r.Stderr))
	if r.ExitCode != 0 {
		return r, &ExitError{Code: r.ExitCode, Stderr: r.Stderr}
	}
	if perr != nil {
		return r, fmt.Errorf("migrate's report: %w\n%s", perr, r.Stdout)
	}
	if r.Outcome == "resumed" {
		if c.Hooks {
			r.VIPMovedBy = "hooks"
		} else if has, err := m.From.HasVIP(); err != nil {
			return r, err
		} else if has {
			if err := c.MoveVIP(m.From, m.To); err != nil {
				return r, err
			}
			r.VIPMovedBy = "harness"
		}
	}
	return r, nil
}

// HasVIP says whether the node holds the IPv4 VIP.
func (n *Node) HasVIP() (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "-n", n.NetNS, "-o", "addr", "show", "dev", "eth0").Output()
	if err != nil {
		return false, fmt.Errorf("node %s: ip addr: %w", n.Name, err)
	}
	return bytes.Contains(out, []byte(" "+n.c.VIP.String()+"/32 ")), nil
}

// VIPHolders returns the agent nodes that hold the IPv4 VIP (one, unless
// something went wrong).
func (c *Cluster) VIPHolders() ([]*Node, error) {
	var out []*Node
	for _, n := range []*Node{c.A, c.B} {
		has, err := n.HasVIP()
		if err != nil {
			return nil, err
		}
		if has {
			out = append(out, n)
		}
	}
	return out, nil
}

// MoveVIP moves the VIP (both families) from one node to another, and
// announces it from there, as the hooks do.
func (c *Cluster) MoveVIP(from, to *Node) error {
	if err := c.run("ip", "netns", "exec", from.NetNS, "sh", "-c", c.delVIP()+"; exit 0"); err != nil {
		return err
	}
	return c.addVIP(to)
}

// addVIP adds the VIP to n and announces it: the kernel sends the
// unsolicited neighbour advertisement for the IPv6 VIP, the cluster the
// unsolicited ARP for the IPv4 one, before it returns.
func (c *Cluster) addVIP(n *Node) error {
	if err := c.run("ip", "netns", "exec", n.NetNS, "sh", "-c", c.addVIPcmd()); err != nil {
		return err
	}
	return n.Do(func() error { return announce("eth0", c.VIP) })
}

// Shell commands the hooks are made of; they run inside a node.
func (c *Cluster) addVIPcmd() string {
	return fmt.Sprintf("ip addr add %s/32 dev eth0 && ip -6 addr add %s/128 dev eth0", c.VIP, c.VIP6)
}

func (c *Cluster) delVIP() string {
	return fmt.Sprintf("ip addr del %s/32 dev eth0 2>/dev/null; ip -6 addr del %s/128 dev eth0 2>/dev/null", c.VIP, c.VIP6)
}

// announce is the hooks' way to send an unsolicited ARP for the VIP: an
// arping in the background (it waits a second after it sent; the
// service, PID 1 of the node, reaps it). The kernel announces the IPv6
// VIP itself (ndisc_notify).
func (c *Cluster) announce() string {
	return fmt.Sprintf("{ arping -q -U -c 1 -I eth0 %s </dev/null >/dev/null 2>&1 & }", c.VIP)
}

// mark is a file in the node's own directory: the hooks' memory of what
// they did to the VIP, so that an abort undoes only that.
func (c *Cluster) mark(n *Node, name string) (string, error) {
	dir := filepath.Join(c.Dir, "node-"+n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return filepath.Join(dir, name), nil
}

// serveHooks are the --hook flags of a node's service (the target side):
// pre-resume adds and announces the VIP (the restored process is still
// stopped), abort removes it if pre-resume had added it.
// vipBatch writes (once) and returns an `ip -batch` file that adds (or
// deletes) both service addresses: one ip process instead of two, and
// no touch, keep the hooks in the downtime's path cheap (each process
// started costs milliseconds here).
func (c *Cluster) vipBatch(op string) string {
	p := filepath.Join(c.Dir, "vip-"+op+".batch")
	if _, err := os.Stat(p); err != nil {
		body := fmt.Sprintf("addr %s %s/32 dev eth0\naddr %s %s/128 dev eth0\n", op, c.VIP, op, c.VIP6)
		os.WriteFile(p, []byte(body), 0o644)
	}
	return p
}

func (c *Cluster) serveHooks(n *Node) []string {
	if c.Address {
		return c.addressFlags()
	}
	m, _ := c.mark(n, "vip-added")
	return []string{
		"--hook", fmt.Sprintf("pre-resume=ip -batch %s && : > %s; %s; exit 0", c.vipBatch("add"), m, c.announce()),
		"--hook", fmt.Sprintf("post-resume=rm -f %s", m),
		"--hook", fmt.Sprintf("abort=if [ -e %s ]; then rm -f %s; %s; fi; exit 0", m, m, c.delVIP()),
	}
}

// sourceHooks are the --hook flags of `migrate --to` on node n: post-dump
// removes the VIP (the original is frozen, its network locked), abort puts
// it back if post-dump had removed it.
func (c *Cluster) sourceHooks(n *Node) []string {
	if c.Address {
		return c.addressFlags()
	}
	m, _ := c.mark(n, "vip-released")
	del := fmt.Sprintf("ip -force -batch %s 2>/dev/null && : > %s; exit 0", c.vipBatch("del"), m)
	return []string{
		"--hook", "post-dump=" + del,
		"--hook", fmt.Sprintf("post-resume=rm -f %s", m),
		"--hook", fmt.Sprintf("abort=if [ -e %s ]; then rm -f %s; %s; %s; fi; exit 0", m, m, c.addVIPcmd(), c.announce()),
	}
}

// addressFlags move both service addresses in-process (--address): the
// same on both sides, each does its part.
func (c *Cluster) addressFlags() []string {
	return []string{"--address", c.VIP.String() + "/32@eth0", "--address", c.VIP6.String() + "/128@eth0"}
}

// syncBuffer is a bytes.Buffer safe for a writer and readers at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
