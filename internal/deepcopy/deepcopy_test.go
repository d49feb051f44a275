package deepcopy

import (
	"encoding/json"
	"math/rand"
	"reflect"
	"strings"
	"testing"

	"github.com/procmig/migrate/internal/testutil"
)

type leaf struct {
	A int
	b uint16 // unexported, no references: copied
	S string
}

type node struct {
	Name  string
	Next  *node // recursive
	Kids  []node
	Tags  map[string][]int
	Grid  [2][]byte
	Flat  [3]leaf
	Leaf  *leaf
	Bytes []byte
	Empty []int
}

func TestOfSharesNothing(t *testing.T) {
	for seed := int64(1); seed <= 50; seed++ {
		var n node
		testutil.Fill(reflect.ValueOf(&n).Elem(), rand.New(rand.NewSource(seed)), 3)
		n.Empty = []int{}
		before, err := json.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		c, err := Of(n)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(c, n) {
			t.Fatalf("seed %d: the copy differs from the original", seed)
		}
		if c.Empty == nil {
			t.Fatalf("seed %d: an empty slice became nil", seed)
		}
		// Every byte reachable from the copy changed: none of the
		// original's may.
		testutil.Fill(reflect.ValueOf(&c).Elem(), rand.New(rand.NewSource(seed+1000)), -1)
		after, err := json.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		if string(before) != string(after) {
			t.Fatalf("seed %d: changing the copy changed the original", seed)
		}
	}
}

func TestOfUnexportedFlat(t *testing.T) {
	in := leaf{A: 1, b: 7, S: "x"}
	out, err := Of(in)
	if err != nil || out != in {
		t.Fatalf("Of(%+v) = %+v, %v", in, out, err)
	}
}

func TestCheckRefuses(t *testing.T) {
	type hidden struct{ p *int }
	type withIface struct{ V any }
	type withChan struct{ C chan int }
	type withFunc struct{ F func() }
	type deep struct{ Inner []withFunc }
	for _, c := range []struct {
		v    any
		want string
	}{
		{hidden{}, "unexported field"},
		{withIface{}, "interface"},
		{withChan{}, "chan"},
		{withFunc{}, "func"},
		{deep{}, "deepcopy.deep.Inner"},
	} {
		err := Check(reflect.TypeOf(c.v))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%T) = %v, want an error naming %q", c.v, err, c.want)
		}
	}
	if _, err := Of(withChan{}); err == nil {
		t.Error("Of copied a channel")
	}
}
