package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every network namespace a cluster creates.
const Prefix = "migrate-e2e-"

// ServePort is the port `migrate serve` listens on, on each agent node's
// own address.
const ServePort = 7070

// The cluster's addresses. They exist only inside its namespaces.
var (
	Subnet  = netip.MustParsePrefix("10.231.0.0/24")
	Subnet6 = netip.MustParsePrefix("fd00:231::/64")
	VIP     = netip.MustParseAddr("10.231.0.100")
	VIP6    = netip.MustParseAddr("fd00:231::100")
)

// HookMode says whether the cluster passes --hook to migrate.
type HookMode int

const (
	// HooksAuto moves the VIP with --address if the migrate binary's help
	// mentions it, else with --hook commands if it mentions that.
	HooksAuto HookMode = iota
	// HooksOff never passes --hook; Migrate moves the VIP itself.
	HooksOff
	// HooksOn always moves the VIP with --hook commands (ip, arping).
	HooksOn
	// HooksAddress always moves it with --address (in-process).
	HooksAddress
)

// Options configure New.
type Options struct {
	// Migrate is the path of the migrate binary (required). It must be
	// reachable at the same path inside the nodes (any path of the
	// machine's file system is).
	Migrate string
	// Log receives the commands the cluster runs and their output; nil
	// discards them.
	Log io.Writer
	// ServeArgs are added to each `migrate serve` command line (e.g. "-v").
	ServeArgs []string
	// Hooks: HooksAuto (the default), HooksOff or HooksOn.
	Hooks HookMode
}

// MissingError says that something the cluster needs is not on this
// machine: a command (and the Debian package that has it), or root.
type MissingError struct {
	What    string // a command, or "root"
	Package string // the Debian package that provides it, if any
}

func (e *MissingError) Error() string {
	if e.Package == "" {
		return "cluster: needs " + e.What
	}
	return fmt.Sprintf("cluster: needs %s (apt-get install %s)", e.What, e.Package)
}

// Cluster is a running cluster. Its exported fields do not change after
// New, except the nodes' service fields (see Node.RestartServe).
type Cluster struct {
	// ID is the run id in every name the cluster gives.
	ID string
	// Dir is the cluster's own directory: the secret, the logs and the
	// hooks' marks. Close removes it.
	Dir string
	// SecretFile authenticates every `migrate serve` and `migrate --to`.
	SecretFile string
	// MigrateBin is Options.Migrate.
	MigrateBin string
	// A and B run `migrate serve`; Client is a plain node.
	A, B, Client *Node
	// VIP and VIP6 are the service address, on A at first.
	VIP, VIP6 netip.Addr
	// Hooks says whether serve and Migrate pass --hook or --address: then
	// the migration moves the VIP, else Migrate does.
	Hooks bool
	// Address says the VIP moves with --address (in-process), not with
	// --hook commands.
	Address bool

	opts  Options
	sw    string // the switch's network namespace
	logMu sync.Mutex

	mu         sync.Mutex
	procs      []*Proc
	migrations []*Migration
	netns      []string // created, in order
	closed     bool
	closeErr   error
}

var runSeq atomic.Int64

// New builds a cluster: removes the leftovers of crashed runs, creates the
// switch and the three nodes with their addresses, puts the VIP on A, and
// starts `migrate serve` on A and B. Whatever fails, it leaves nothing
// behind. A *MissingError says what this machine lacks.
func New(opts Options) (*Cluster, error) {
	if os.Geteuid() != 0 {
		return nil, &MissingError{What: "root"}
	}
	for _, t := range [][2]string{{"ip", "iproute2"}, {"nsenter", "util-linux"}, {"unshare", "util-linux"}} {
		if _, err := exec.LookPath(t[0]); err != nil {
			return nil, &MissingError{What: t[0], Package: t[1]}
		}
	}
	if opts.Migrate == "" {
		return nil, errors.New("cluster: Options.Migrate is required")
	}
	bin, err := filepath.Abs(opts.Migrate)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("cluster: the migrate binary: %w", err)
	}
	start, err := startTime(os.Getpid())
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		ID:         fmt.Sprintf("%d.%d.%d", os.Getpid(), start, runSeq.Add(1)),
		MigrateBin: bin,
		VIP:        VIP,
		VIP6:       VIP6,
		opts:       opts,
	}
	if err := c.removeLeftovers(); err != nil {
		return nil, err
	}
	if c.Dir, err = os.MkdirTemp("", Prefix+c.ID+"-"); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	if err := c.writeSecret(); err != nil {
		return nil, err
	}
	switch opts.Hooks {
	case HooksOn:
		c.Hooks = true
	case HooksAddress:
		c.Hooks, c.Address = true, true
	case HooksAuto:
		c.Address = c.probeHelp("--address")
		c.Hooks = c.Address || c.probeHelp("--hook")
	}
	c.logf("cluster %s: hooks %v, --address %v", c.ID, c.Hooks, c.Address)
	c.A = c.newNode("a", 1, 10000)
	c.B = c.newNode("b", 2, 20000)
	c.Client = c.newNode("client", 3, 0)
	if err := c.buildNetwork(); err != nil {
		return nil, err
	}
	if err := c.addVIP(c.A); err != nil {
		return nil, err
	}
	for _, n := range []*Node{c.A, c.B} {
		if err := n.StartServe(); err != nil {
			return nil, err
		}
	}
	ok = true
	return c, nil
}

func (c *Cluster) newNode(name string, host byte, pidBase int) *Node {
	a4 := Subnet.Addr().As4()
	a4[3] = host
	a16 := Subnet6.Addr().As16()
	a16[15] = host
	n := &Node{
		Name:    name,
		NetNS:   c.nsName(name),
		Addr:    netip.AddrFrom4(a4),
		Addr6:   netip.AddrFrom16(a16),
		c:       c,
		port:    "port-" + name,
		pidBase: pidBase,
	}
	if pidBase > 0 {
		n.ServeAddr = netip.AddrPortFrom(n.Addr, ServePort).String()
	}
	return n
}

func (c *Cluster) nsName(node string) string { return Prefix + c.ID + "-" + node }

// writeSecret writes the shared secret, 64 random hex digits, mode 0600.
func (c *Cluster) writeSecret() error {
	var b [32]byte
	if _, err := unix.Getrandom(b[:], 0); err != nil {
		return err
	}
	c.SecretFile = filepath.Join(c.Dir, "secret")
	return os.WriteFile(c.SecretFile, fmt.Appendf(nil, "%x\n", b), 0o600)
}

// probeHelp says whether both `migrate serve` and `migrate --to` take
// flag.
func (c *Cluster) probeHelp(flag string) bool {
	for _, cmd := range []string{"serve", "to"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, _ := exec.CommandContext(ctx, c.MigrateBin, "help", cmd).CombinedOutput()
		cancel()
		if !bytes.Contains(out, []byte(flag)) {
			return false
		}
	}
	return true
}

// sysctls of every node: addresses usable at once (no DAD), an unsolicited
// neighbour advertisement for each IPv6 address added, addresses kept
// when a link goes down (the fault tests cut links).
const nodeSysctls = `set -e
for c in all default; do
	echo 0 > /proc/sys/net/ipv6/conf/$c/accept_dad
	echo 1 > /proc/sys/net/ipv6/conf/$c/ndisc_notify
	echo 1 > /proc/sys/net/ipv6/conf/$c/keep_addr_on_down
done`

// buildNetwork creates the namespaces, the bridge and the veth pairs.
func (c *Cluster) buildNetwork() error {
	c.sw = c.nsName("switch")
	if err := c.addNetNS(c.sw); err != nil {
		return err
	}
	// The switch is silent: no IPv6 link-local addresses on its ports.
	if err := c.run("ip", "netns", "exec", c.sw, "sh", "-c",
		"echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"); err != nil {
		return err
	}
	if err := c.run("ip", "-n", c.sw, "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if err := c.run("ip", "-n", c.sw, "link", "set", "br0", "up"); err != nil {
		return err
	}
	for _, n := range []*Node{c.A, c.B, c.Client} {
		if err := c.addNetNS(n.NetNS); err != nil {
			return err
		}
		steps := [][]string{
			{"ip", "netns", "exec", n.NetNS, "sh", "-c", nodeSysctls},
			{"ip", "-n", c.sw, "link", "add", n.port, "type", "veth", "peer", "name", "eth0", "netns", n.NetNS},
			{"ip", "-n", c.sw, "link", "set", n.port, "master", "br0", "up"},
			{"ip", "-n", n.NetNS, "link", "set", "lo", "up"},
			{"ip", "-n", n.NetNS, "addr", "add", fmt.Sprintf("%s/%d", n.Addr, Subnet.Bits()), "dev", "eth0"},
			{"ip", "-n", n.NetNS, "addr", "add", fmt.Sprintf("%s/%d", n.Addr6, Subnet6.Bits()), "dev", "eth0"},
			{"ip", "-n", n.NetNS, "link", "set", "eth0", "up"},
		}
		for _, s := range steps {
			if err := c.run(s[0], s[1:]...); err != nil {
				return err
			}
		}
		if err := n.Do(func() error {
			ifc, err := netInterface("eth0")
			if err == nil {
				n.MAC = ifc
			}
			return err
		}); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

func (c *Cluster) addNetNS(name string) error {
	if err := c.run("ip", "netns", "add", name); err != nil {
		return err
	}
	c.mu.Lock()
	c.netns = append(c.netns, name)
	c.mu.Unlock()
	return nil
}

// Close stops every process the cluster started (the services, and with
// them everything on A and B; the processes started on the client),
// deletes the namespaces (and with them the links and addresses) and the
// cluster's directory. It may be called more than once; later calls return
// the first call's result.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.closeErr
	}
	c.closed = true
	procs, migrations := c.procs, c.migrations
	c.mu.Unlock()

	var errs []error
	// The records of migrations the nodes left (a source killed, an
	// original left frozen), which /run/migrate keeps for the host: their
	// PIDs are of the nodes' namespaces, which go now.
	for _, n := range []*Node{c.A, c.B} {
		if n != nil && n.ServePID != 0 {
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", n.ServePID)); err == nil {
				removeRecords(ns)
			}
		}
	}
	// The end of a service's PID namespace ends every process in it.
	for _, n := range []*Node{c.A, c.B} {
		if n != nil {
			errs = append(errs, n.KillServe())
		}
	}
	for _, m := range migrations {
		errs = append(errs, m.stop())
	}
	for _, p := range procs {
		errs = append(errs, p.Stop())
	}
	c.mu.Lock()
	netns := c.netns
	c.mu.Unlock()
	for i := len(netns) - 1; i >= 0; i-- {
		// Nothing of ours runs there now; anything left (a process
		// someone started with Node.Command) is killed, by PID.
		c.killNetNSPids(netns[i])
		errs = append(errs, c.run("ip", "netns", "del", netns[i]))
	}
	if c.Dir != "" {
		errs = append(errs, os.RemoveAll(c.Dir))
	}
	c.mu.Lock()
	c.closeErr = errors.Join(errs...)
	c.mu.Unlock()
	return c.closeErr
}

// removeLeftovers deletes what earlier runs left behind, if their
// creating process (PID and start time in the run id) is gone: their
// namespaces named with Prefix (after killing their processes) and their
// directories.
func (c *Cluster) removeLeftovers() error {
	var errs []error
	ents, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var stale []string
	for _, e := range ents {
		if id, ok := strings.CutPrefix(e.Name(), Prefix); ok && staleRun(id) {
			stale = append(stale, e.Name())
		}
	}
	for _, ns := range stale {
		c.logf("cluster: removing %s, left by a run that is gone", ns)
		c.killNetNSPids(ns)
	}
	for _, ns := range stale {
		// Two runs may clean the same leftovers at once (tests of
		// several packages or checkouts in parallel): one already gone is
		// removed.
		if err := c.run("ip", "netns", "del", ns); err != nil {
			if _, serr := os.Stat(filepath.Join("/run/netns", ns)); !errors.Is(serr, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), Prefix+"*"))
	for _, d := range dirs {
		if staleRun(strings.TrimPrefix(filepath.Base(d), Prefix)) {
			c.logf("cluster: removing %s, left by a run that is gone", d)
			errs = append(errs, os.RemoveAll(d))
		}
	}
	return errors.Join(errs...)
}

// staleRun says whether the run whose id starts s (PID.START.SEQ) is
// gone: its process no longer exists, or the PID is another process's. A
// name of another form is not a cluster's, and not stale: someone else's
// directory under the same prefix (a test's os.MkdirTemp) is left alone.
func staleRun(s string) bool {
	f := strings.SplitN(s, ".", 3)
	if len(f) != 3 {
		return false
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil || pid <= 0 {
		return false
	}
	st, err := startTime(pid)
	return err != nil || st != start
}

// killNetNSPids kills, with SIGKILL, the processes that `ip netns pids`
// lists in the namespace, and waits (up to 5 s) until they are gone or
// zombies.
func (c *Cluster) killNetNSPids(ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			c.logf("cluster: kill %d (%s) in %s", pid, comm(pid), ns)
			unix.Kill(pid, unix.SIGKILL)
			pids = append(pids, pid)
		}
	}
	poll(5*time.Second, func() bool {
		for _, pid := range pids {
			if st, err := state(pid); err == nil && st != 'Z' {
				return false
			}
		}
		return true
	})
}

// run runs a setup command (30 s at most) and logs it.
func (c *Cluster) run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	line := strings.ReplaceAll(name+" "+strings.Join(args, " "), "\n", "; ")
	if len(out) > 0 {
		c.logf("$ %s\n%s", line, bytes.TrimRight(out, "\n"))
	} else {
		c.logf("$ %s", line)
	}
	if err != nil {
		return fmt.Errorf("%s: %w: %s", line, err, bytes.TrimSpace(out))
	}
	return nil
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Log == nil {
		return
	}
	c.logMu.Lock()
	defer c.logMu.Unlock()
	fmt.Fprintf(c.opts.Log, format+"\n", args...)
}

func (c *Cluster) track(p *Proc) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("cluster: closed")
	}
	c.procs = append(c.procs, p)
	return nil
}

// poll calls cond every few milliseconds until it returns true or maxWait
// has passed; it reports whether cond returned true.
func poll(maxWait time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(maxWait)
	delay := time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(delay)
		delay = min(delay*2, 50*time.Millisecond)
	}
}

// stat fields of /proc/PID/stat, after the command name.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	return f, nil
}

// startTime returns the start time of pid (clock ticks since boot).
func startTime(pid int) (uint64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// state returns the state letter of pid.
func state(pid int) (byte, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	return f[0][0], nil
}

// parent returns the parent PID of pid.
func parent(pid int) (int, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(f[1])
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// children returns the children of pid's main thread.
func children(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// recordDir is where migrate keeps the records of migrations
// (source.RecordDir).
const recordDir = "/run/migrate"

// removeRecords removes the migration records written in PID namespace ns.
func removeRecords(ns string) {
	files, _ := filepath.Glob(filepath.Join(recordDir, "*.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var r struct {
			PIDNS string `json:"pid_ns"`
		}
		if json.Unmarshal(b, &r) == nil && r.PIDNS == ns {
			os.Remove(f)
		}
	}
}
