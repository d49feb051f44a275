package handoff

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/procmig/migrate/core"
)

// TestLiveLayoutSingleProcess: the layout of a single process is what it
// was before trees moved (no "tree" key), and a layout from a peer that
// knows nothing of trees decodes with no tree.
func TestLiveLayoutSingleProcess(t *testing.T) {
	b, err := json.Marshal(LiveLayout{Process: core.Process{PID: 7, Comm: "x"}, FDs: 3})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), `"tree"`) {
		t.Errorf("a single process's layout names a tree: %s", b)
	}
	old := `{"process":{"pid":7,"ppid":1,"comm":"x"},"fds":3}`
	var ll LiveLayout
	if err := json.Unmarshal([]byte(old), &ll); err != nil {
		t.Fatal(err)
	}
	if ll.Process.PID != 7 || ll.FDs != 3 || ll.Tree != nil {
		t.Errorf("an older peer's layout decodes as %+v", ll)
	}
	// A tree's other processes go with it.
	b, err = json.Marshal(LiveLayout{Process: core.Process{PID: 7}, Tree: []core.Process{{PID: 8, PPID: 7}}})
	if err != nil {
		t.Fatal(err)
	}
	ll = LiveLayout{}
	if err := json.Unmarshal(b, &ll); err != nil {
		t.Fatal(err)
	}
	if len(ll.Tree) != 1 || ll.Tree[0].PID != 8 || ll.Tree[0].PPID != 7 {
		t.Errorf("a tree's layout decodes as %+v", ll)
	}
}
