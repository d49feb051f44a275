package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/procmig/migrate"
)

// Dump a process into a directory, then restore it from there: it comes
// back with the same PID.
func ExampleDump() {
	ctx := context.Background()
	p, err := startSleep() // /bin/sleep 1000, a child of this process
	if err != nil {
		fmt.Println(err)
		return
	}
	dir, err := os.MkdirTemp("", "migrate-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	rep, err := migrate.Dump(ctx, p.Process.Pid, dir, migrate.DumpOptions{})
	if err != nil {
		fmt.Println(err) // the process runs on: end it
		p.Process.Kill()
	}
	p.Wait() // the dump killed it (DumpOptions.LeaveRunning lets it run on)
	if err != nil {
		return
	}
	fmt.Println("dumped", rep.Comm)

	res, err := migrate.Restore(ctx, dir, migrate.RestoreOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("restored", res.Comm, "with the same PID:", res.PID == rep.PID)
	kill(res.PID)
	// Output:
	// dumped sleep
	// restored sleep with the same PID: true
}

// Migrate a process to a Serve, and follow both sides' events.
func ExampleMigrate() {
	ctx := context.Background()
	auth := migrate.Auth{Secret: newSecret()}
	// A Serve on 127.0.0.1 (this test binary, in a PID namespace of its
	// own: here the process's PID is taken by the original).
	t, err := startServe(auth)
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := startSleep()
	if err != nil {
		fmt.Println(err)
		t.Stop()
		return
	}

	var events []string
	policy := migrate.DefaultPolicy
	policy.MaxRounds = 1 // one round while it runs, then the frozen one
	rep, err := migrate.Migrate(ctx, p.Process.Pid, t.Addr, migrate.MigrateOptions{
		Auth:    auth,
		Policy:  policy,
		OnEvent: func(e migrate.Event) { events = append(events, e.Kind.String()) },
	})
	if err != nil {
		fmt.Println(err) // the original runs on: end it
		p.Process.Kill()
	} else {
		fmt.Println(rep.Outcome)
	}
	p.Wait() // the original, killed once the target runs the process
	fmt.Println("source:", join(events))
	fmt.Println("target:", join(t.Stop()))
	// Output:
	// resumed
	// source: round-started round-finished frozen round-started round-finished committed resumed
	// target: session-started session-restored session-committed
}

// A process migrate does not handle is refused with a kind that says why.
func ExampleRefusedError() {
	dir, err := os.MkdirTemp("", "migrate-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	_, err = migrate.Dump(context.Background(), 1, dir, migrate.DumpOptions{})
	var refused *migrate.RefusedError
	if errors.As(err, &refused) {
		fmt.Println("refused:", refused.Kind)
	}
	// Output:
	// refused: process
}

// Serve on 127.0.0.1, and migrate a process to it from this same host: the
// service refuses it, as its PID is taken here (by the original), before
// anything is frozen; the source gets the target's refusal as a
// RefusedError of the kind the target named, and the original runs on.
func ExampleServe() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	auth := migrate.Auth{Secret: newSecret()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	var mu sync.Mutex
	var served []string
	done := make(chan error)
	go func() {
		done <- migrate.Serve(ctx, ln, migrate.ServeOptions{
			Auth: auth,
			OnEvent: func(e migrate.Event) {
				mu.Lock() // sessions run at once
				defer mu.Unlock()
				served = append(served, e.Kind.String())
			},
		})
	}()

	p, err := startSleep()
	if err != nil {
		fmt.Println(err)
		cancel()
		<-done
		return
	}
	var events []string
	_, err = migrate.Migrate(ctx, p.Process.Pid, ln.Addr().String(), migrate.MigrateOptions{
		Auth:    auth,
		OnEvent: func(e migrate.Event) { events = append(events, e.Kind.String()) },
	})
	var refused *migrate.RefusedError
	if errors.As(err, &refused) {
		fmt.Println("the target refused:", refused.Kind)
	}
	fmt.Println("the original runs:", p.Process.Signal(syscall.Signal(0)) == nil)
	p.Process.Kill()
	p.Wait()

	cancel()
	if err := <-done; err != nil {
		fmt.Println(err)
	}
	fmt.Println("source:", join(events))
	fmt.Println("target:", join(served))
	// Output:
	// the target refused: pid-in-use
	// the original runs: true
	// source: aborted
	// target: session-started session-aborted
}
