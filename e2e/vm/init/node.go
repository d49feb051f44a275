package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// The node mode (migrate.mode=node): the VM is the other host of a live
// migration. It loads the network driver, brings up eth0 with qemu's
// user-network address, runs `/migrate serve` on nodeServePort and
// serves the host's test on nodeAgentPort (both forwarded from host
// loopback ports by qemu's hostfwd), and prints "vmnode: ready" once both
// listen. The host is 10.0.2.2 from here (qemu's gateway: its loopback).
const (
	nodeAddr      = "10.0.2.15"
	nodeServePort = 7070
	nodeAgentPort = 7071
	modulesDir    = "/modules" // the .ko files and modules.order, from scripts/vmkernel.sh
)

func node() {
	// The PIDs of the host's processes are taken as they are: the
	// default pid_max (32768 on 2 CPUs) is below many of them.
	if err := os.WriteFile("/proc/sys/kernel/pid_max", []byte("4194304"), 0); err != nil {
		fmt.Printf("vmnode: pid_max: %v\n", err)
	}
	// migrate.lastpid=N: the PIDs of the processes to come follow N (a
	// node whose processes move to another VM, booted alike, whose PIDs
	// near the start are taken).
	if n := get(cmdline(), "migrate.lastpid", ""); n != "" {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(n), 0); err != nil {
			fmt.Printf("vmnode: ns_last_pid: %v\n", err)
		}
	}
	// A dump records the processes' cgroups from the cgroup2 mount.
	mount("cgroup2", "/sys/fs/cgroup", "cgroup2")
	if err := loadModules(modulesDir); err != nil {
		fmt.Printf("vmnode: FAIL %v\n", err)
		return
	}
	if err := ifUp("lo", "127.0.0.1", net.CIDRMask(8, 32)); err != nil {
		fmt.Printf("vmnode: FAIL %v\n", err)
		return
	}
	// The driver makes eth0 a moment after its module loaded.
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = ifUp("eth0", nodeAddr, net.CIDRMask(24, 32)); err == nil {
			break
		}
	}
	if err != nil {
		fmt.Printf("vmnode: FAIL %v\n", err)
		return
	}
	if err := startServe(); err != nil {
		fmt.Printf("vmnode: FAIL %v\n", err)
		return
	}
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", nodeAgentPort))
	if err != nil {
		fmt.Printf("vmnode: FAIL %v\n", err)
		return
	}
	fmt.Println("vmnode: ready")
	err = http.Serve(l, agent())
	fmt.Printf("vmnode: FAIL agent: %v\n", err)
}

// loadModules loads the modules dir/modules.order lists, in its order.
func loadModules(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "modules.order"))
	if err != nil {
		return fmt.Errorf("modules: %w", err)
	}
	for _, m := range strings.Fields(string(b)) {
		f, err := os.Open(filepath.Join(dir, filepath.Base(m)))
		if err != nil {
			return fmt.Errorf("module %s: %w", m, err)
		}
		flags := 0
		if strings.HasSuffix(m, ".xz") {
			flags = unix.MODULE_INIT_COMPRESSED_FILE // the kernel decompresses it
		}
		err = unix.FinitModule(int(f.Fd()), "", flags)
		f.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("load module %s: %w", m, err)
		}
	}
	return nil
}

// ifUp gives the interface name the address addr/mask and brings it up.
func ifUp(name, addr string, mask net.IPMask) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	set := func(req uint, what string, f func(*unix.Ifreq) error) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := f(ifr); err != nil {
			return fmt.Errorf("%s %s: %w", name, what, err)
		}
		if err := unix.IoctlIfreq(fd, req, ifr); err != nil {
			return fmt.Errorf("%s %s: %w", name, what, err)
		}
		return nil
	}
	if err := set(unix.SIOCSIFADDR, "address", func(r *unix.Ifreq) error { return r.SetInet4Addr(net.ParseIP(addr).To4()) }); err != nil {
		return err
	}
	if err := set(unix.SIOCSIFNETMASK, "netmask", func(r *unix.Ifreq) error { return r.SetInet4Addr(mask) }); err != nil {
		return err
	}
	return set(unix.SIOCSIFFLAGS, "up", func(r *unix.Ifreq) error {
		r.SetUint16(unix.IFF_UP | unix.IFF_RUNNING)
		return nil
	})
}

// startServe runs /migrate serve and waits until it listens; its output
// goes to the console, each line prefixed with "serve: ".
func startServe() error {
	// The VM has cgroup v2 alone, the host's processes live in cgroup v1
	// hierarchies too: the processes moved here stay in serve's cgroups.
	cmd := exec.Command("/migrate", "serve", "--listen", fmt.Sprintf(":%d", nodeServePort), "--insecure", "--cgroups", "ignore", "-v")
	cmd.Env = nodeEnv()
	cmd.Dir = "/"
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("migrate serve: %w", err)
	}
	go cmd.Wait()
	listening := make(chan struct{})
	go func() {
		said := false
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if !said && strings.HasPrefix(sc.Text(), "listening on ") {
				close(listening)
				said = true
			}
			fmt.Printf("serve: %s\n", sc.Text())
		}
	}()
	select {
	case <-listening:
		return nil
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("migrate serve did not listen within 2 minutes")
	}
}

func nodeEnv() []string {
	return []string{"PATH=/bin:/usr/bin", "HOME=/", "LC_ALL=C"}
}

// The agent: how the host's test acts in the VM. JSON over HTTP, on a
// port only the host's loopback reaches (qemu's hostfwd); the VM is a
// throwaway test machine.
//
//	POST /start {argv, env, dir, log}  start a process, stdout and stderr
//	                                   appended to log: {pid}
//	POST /run {argv, env, dir}         run a command to its end:
//	                                   {code, stdout, stderr}
//	GET  /file?path=P                  a file's contents (404 if missing)
//	PUT  /file?path=P                  write a file (its directory made)
//	POST /clock {unix_ns}              set CLOCK_REALTIME
//	GET  /info                         this CPU's XSAVE features: {xcr0}
//	POST /kill {pid, sig}              send a signal
type agentCmd struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	Dir  string   `json:"dir"`
	Log  string   `json:"log"`
}

type agentResult struct {
	PID    int    `json:"pid,omitempty"`
	Code   int    `json:"code"`
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
}

func agent() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /start", func(w http.ResponseWriter, r *http.Request) {
		var c agentCmd
		cmd, ok := decodeCmd(w, r, &c)
		if !ok {
			return
		}
		log, err := os.OpenFile(c.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer log.Close()
		cmd.Stdout, cmd.Stderr = log, log
		// A session of its own: one the process takes along.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		go cmd.Wait()
		reply(w, agentResult{PID: cmd.Process.Pid})
	})
	mux.HandleFunc("POST /run", func(w http.ResponseWriter, r *http.Request) {
		var c agentCmd
		cmd, ok := decodeCmd(w, r, &c)
		if !ok {
			return
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		res := agentResult{}
		if err := cmd.Run(); err != nil {
			res.Code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				res.Code = ee.ExitCode()
			} else {
				stderr.WriteString(err.Error())
			}
		}
		res.Stdout, res.Stderr = stdout.String(), stderr.String()
		reply(w, res)
	})
	mux.HandleFunc("GET /file", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	mux.HandleFunc("PUT /file", func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Query().Get("path")
		b, err := io.ReadAll(r.Body)
		if err == nil {
			err = os.MkdirAll(filepath.Dir(path), 0o755)
		}
		if err == nil {
			err = os.WriteFile(path, b, 0o644)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	mux.HandleFunc("POST /clock", func(w http.ResponseWriter, r *http.Request) {
		var c struct {
			UnixNS int64 `json:"unix_ns"`
		}
		if err := json.NewDecoder(r.Body).Decode(&c); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ts := unix.NsecToTimespec(c.UnixNS)
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, r *http.Request) {
		xcr0, _ := raw.XCR0()
		reply(w, struct {
			XCR0 uint64 `json:"xcr0"`
		}{xcr0})
	})
	mux.HandleFunc("POST /kill", func(w http.ResponseWriter, r *http.Request) {
		var c struct {
			PID int `json:"pid"`
			Sig int `json:"sig"`
		}
		if err := json.NewDecoder(r.Body).Decode(&c); err != nil || c.PID <= 0 {
			http.Error(w, fmt.Sprintf("bad kill request: %v", err), http.StatusBadRequest)
			return
		}
		if err := unix.Kill(c.PID, unix.Signal(c.Sig)); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	return mux
}

func decodeCmd(w http.ResponseWriter, r *http.Request, c *agentCmd) (*exec.Cmd, bool) {
	if err := json.NewDecoder(r.Body).Decode(c); err != nil || len(c.Argv) == 0 {
		http.Error(w, fmt.Sprintf("bad command: %v", err), http.StatusBadRequest)
		return nil, false
	}
	cmd := exec.Command(c.Argv[0], c.Argv[1:]...)
	cmd.Env, cmd.Dir = c.Env, c.Dir
	if cmd.Env == nil {
		cmd.Env = nodeEnv()
	}
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	return cmd, true
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
