// goexec: a Go program that started a child with os/exec, as servers start
// helpers. Go (1.23+) keeps a pidfd of each child it starts, and signals
// and waits for it through that pidfd.
//
// Lines: "ready pid=P child=C", then "tick N" every 20 ms. SIGUSR1: it
// sends SIGTERM to the child and waits for it (os.Process.Signal and Wait,
// both through the pidfd), then says "waited child=C status=S err=E".
package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

func say(format string, args ...any) {
	os.Stdout.WriteString(fmt.Sprintf(format, args...) + "\n") // one write a line
}

func main() {
	cmd := exec.Command("/bin/sleep", "100000")
	if err := cmd.Start(); err != nil {
		say("FAIL start: %v", err)
		os.Exit(1)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	say("ready pid=%d child=%d", os.Getpid(), cmd.Process.Pid)
	tick := time.NewTicker(20 * time.Millisecond)
	for n := 1; ; n++ {
		select {
		case <-usr1:
			err := cmd.Process.Signal(syscall.SIGTERM)
			st, werr := cmd.Process.Wait()
			status := "none"
			if st != nil {
				status = st.String()
			}
			say("waited child=%d status=%s err=%v", cmd.Process.Pid, status, errorsJoin(err, werr))
		case <-tick.C:
			say("tick %d", n)
		}
	}
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
