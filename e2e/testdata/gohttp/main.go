// gohttp is a test workload of migrate's e2e tests: a Go HTTP server with
// several goroutines and timers.
//
//	gohttp PORT
//
// It listens on 127.0.0.1:PORT and answers
//
//	/hello      "hello from gohttp"
//	/count      the counter a time.Ticker goroutine increments every 20 ms
//	/work?n=N   "sum N*N", computed by N goroutines that each send N
//	            through a channel
//
// Beside the ticker, a pool of 4 goroutines passes a token around a ring
// of channels, and a time.AfterFunc timer re-arms itself. The main
// goroutine writes "tick N count=C ring=R after=A" every 100 ms on stdout
// (a file), one write a line, and "FAIL ..." if something does not add up.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

var count, ring, after atomic.Int64

func say(format string, args ...any) {
	os.Stdout.Write([]byte(fmt.Sprintf(format, args...) + "\n"))
}

func fail(format string, args ...any) {
	say("FAIL "+format, args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: gohttp PORT")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fail("listen: %v", err)
	}

	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		for range t.C {
			count.Add(1)
		}
	}()

	// A ring of 4 goroutines passing a token.
	const n = 4
	chans := make([]chan int64, n)
	for i := range chans {
		chans[i] = make(chan int64)
	}
	for i := range n {
		go func() {
			for v := range chans[i] {
				if i == 0 {
					ring.Store(v)
					time.Sleep(time.Millisecond)
				}
				chans[(i+1)%n] <- v + 1
			}
		}()
	}
	chans[0] <- 0

	var rearm func()
	rearm = func() {
		after.Add(1)
		time.AfterFunc(30*time.Millisecond, rearm)
	}
	time.AfterFunc(30*time.Millisecond, rearm)

	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from gohttp")
	})
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, count.Load())
	})
	mux.HandleFunc("/work", func(w http.ResponseWriter, r *http.Request) {
		k, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || k < 1 || k > 10000 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		c := make(chan int, k)
		var wg sync.WaitGroup
		for range k {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c <- k
			}()
		}
		wg.Wait()
		close(c)
		sum := 0
		for v := range c {
			sum += v
		}
		fmt.Fprintf(w, "sum %d\n", sum)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil {
			fail("serve: %v", err)
		}
	}()

	say("ready pid=%d", os.Getpid())
	var lastCount, lastRing, lastAfter int64
	for tick := 1; ; tick++ {
		time.Sleep(100 * time.Millisecond)
		c, r, a := count.Load(), ring.Load(), after.Load()
		if c < lastCount || r < lastRing || a < lastAfter {
			fail("went back: count %d->%d ring %d->%d after %d->%d", lastCount, c, lastRing, r, lastAfter, a)
		}
		lastCount, lastRing, lastAfter = c, r, a
		say("tick %d count=%d ring=%d after=%d", tick, c, r, a)
	}
}
