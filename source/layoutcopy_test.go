package source

import (
	"encoding/json"
	"math/rand"
	"reflect"
	"testing"

	"github.com/procmig/migrate/core"
	"github.com/procmig/migrate/internal/deepcopy"
	"github.com/procmig/migrate/internal/testutil"
)

// TestLayoutCopy: the copy a final round's layout is built from says on
// the wire what the process says, without its areas, fds and MM, and
// shares no memory with it (the collection goes on writing the process).
func TestLayoutCopy(t *testing.T) {
	if err := deepcopy.Check(reflect.TypeOf(core.Process{})); err != nil {
		t.Fatalf("core.Process can no longer be copied: %v", err)
	}
	for seed := int64(1); seed <= 20; seed++ {
		var p core.Process
		testutil.Fill(reflect.ValueOf(&p).Elem(), rand.New(rand.NewSource(seed)), 4)
		if len(p.VMAs) == 0 || len(p.FDs) == 0 || reflect.DeepEqual(p.MM, core.MM{}) {
			t.Fatalf("seed %d: the filler left the areas, fds or MM empty", seed)
		}
		before, err := json.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		c, err := layoutCopy(&p)
		if err != nil {
			t.Fatal(err)
		}
		if c.VMAs != nil || c.FDs != nil || !reflect.DeepEqual(c.MM, core.MM{}) {
			t.Fatalf("seed %d: the copy kept the areas, fds or MM", seed)
		}
		want := p
		want.VMAs, want.FDs, want.MM = nil, nil, core.MM{}
		wj, _ := json.Marshal(&want)
		cj, _ := json.Marshal(&c)
		if string(wj) != string(cj) {
			t.Fatalf("seed %d: the copy says\n%s\nthe process\n%s", seed, cj, wj)
		}
		testutil.Fill(reflect.ValueOf(&c).Elem(), rand.New(rand.NewSource(seed+1000)), -1)
		after, _ := json.Marshal(&p)
		if string(before) != string(after) {
			t.Fatalf("seed %d: changing the copy changed the process", seed)
		}
	}
}
