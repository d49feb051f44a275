package proc

import (
	"errors"
	"testing"
)

const mountinfoSample = `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw,discard
60 27 0:40 / /mnt/a\040b rw,nosuid master:3 propagate_from:2 - tmpfs my\040box rw,size=1024k
`

func TestParseMountInfo(t *testing.T) {
	ms, err := ParseMountInfo([]byte(mountinfoSample))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 4 {
		t.Fatalf("%d mounts, want 4", len(ms))
	}
	m := ms[3]
	if m.ID != 60 || m.Parent != 27 || m.Dev != "0:40" || m.Root != "/" || m.Point != "/mnt/a b" || m.Options != "rw,nosuid" ||
		m.FSType != "tmpfs" || m.Source != "my box" || m.Super != "rw,size=1024k" || m.Master() != 3 || m.Shared() != 0 {
		t.Errorf("parsed %+v", m)
	}
	if ms[2].Shared() != 1 || ms[2].Root != "/run/netns" {
		t.Errorf("parsed %+v", ms[2])
	}
	for _, bad := range []string{"1 2 0:1 / /x rw\n", "x 2 0:1 / /x rw - tmpfs a rw\n", "1 2 0:1 / /x - tmpfs a rw\n", "1 2 0:1 / /x rw - tmpfs\n"} {
		if _, err := ParseMountInfo([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v, want ErrMalformed", bad, err)
		}
	}
}

func FuzzParseMountInfo(f *testing.F) {
	f.Add([]byte(mountinfoSample))
	f.Fuzz(func(t *testing.T, data []byte) {
		ms, err := ParseMountInfo(data)
		checkErr(t, err)
		for _, m := range ms {
			if m.FSType == "" && err == nil {
				t.Fatalf("mount %+v without a type", m)
			}
		}
	})
}
