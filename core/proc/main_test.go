package proc

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"testing"
)

// TestMain fails the run if the tests leave file descriptors open.
func TestMain(m *testing.M) {
	flag.Parse()
	check := flag.Lookup("test.fuzz").Value.String() == "" &&
		flag.Lookup("test.fuzzworker").Value.String() != "true"
	before := openFDs()
	code := m.Run()
	if check && code == 0 {
		for fd, target := range openFDs() {
			if _, ok := before[fd]; !ok {
				fmt.Fprintf(os.Stderr, "leaked fd %d -> %s\n", fd, target)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// openFDs returns the fds of the test process, leaving out the one ReadFDs
// uses to read the fd directory.
func openFDs() map[int]string {
	fds, err := ReadFDs(os.Getpid())
	if err != nil {
		panic(err)
	}
	self := Root + "/" + strconv.Itoa(os.Getpid()) + "/fd"
	m := make(map[int]string, len(fds))
	for _, l := range fds {
		if l.Target != self {
			m[l.FD] = l.Target
		}
	}
	return m
}
