package target

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestHuskRunsAndPauses(t *testing.T) {
	cmd, _, err := startHusk(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var st string
	for i := 0; i < 100; i++ {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		st = strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
		if st == "S" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("husk state %q, want S (sleeping in pause)", st)
}
