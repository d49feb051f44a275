package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

const uffdPages = 4

// ProbeUffdWP checks dirty tracking with userfaultfd in async write-protect
// mode and PAGEMAP_SCAN, driven from outside the tracked process as the
// dumper drives it: a helper child creates a userfaultfd and maps four
// pages (three written, one never touched); this process takes the
// userfaultfd with pidfd_getfd, enables UFFD_FEATURE_WP_ASYNC, registers and
// write-protects the pages, and then, twice, has the child write one page
// and checks that a PAGEMAP_SCAN of the child's pagemap (PM_SCAN_WP_MATCHING
// | PM_SCAN_CHECK_WPASYNC, category PAGE_IS_WRITTEN) reports exactly that
// page and protects it again.
func ProbeUffdWP(ctx context.Context) (string, error) {
	supported, err := uffdFeatures()
	if err != nil {
		return "", err
	}
	if supported&raw.UFFD_FEATURE_WP_ASYNC == 0 {
		return "", unsupported(FeatureUffdWP, fmt.Sprintf("UFFD_FEATURE_WP_ASYNC missing (features %#x); needs Linux 6.7", supported), nil)
	}

	h, kv, err := askHelper(ctx, "uffd", FeatureUffdWP, "userfaultfd in a child")
	if err != nil {
		return "", err
	}
	defer h.kill()
	addr, err1 := strconv.ParseUint(kv["addr"], 0, 64)
	childFD, err2 := strconv.Atoi(kv["fd"])
	if err := errors.Join(err1, err2); err != nil {
		return "", fmt.Errorf("helper answer %v: %w", kv, err)
	}
	pageSize := uint64(os.Getpagesize())
	length := uffdPages * pageSize

	pidfd, err := unix.PidfdOpen(h.pid(), 0)
	if err != nil {
		return "", unsupported(FeatureUffdWP, "pidfd_open, needed to take the child's userfaultfd", err)
	}
	defer unix.Close(pidfd)
	uffd, err := unix.PidfdGetfd(pidfd, childFD, 0)
	if err != nil {
		return "", unsupported(FeatureUffdWP, "pidfd_getfd of the child's userfaultfd", err)
	}
	defer unix.Close(uffd)

	want := uint64(raw.UFFD_FEATURE_WP_ASYNC | raw.UFFD_FEATURE_WP_UNPOPULATED)
	if supported&raw.UFFD_FEATURE_WP_HUGETLBFS_SHMEM != 0 {
		want |= raw.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
	}
	api, err := raw.UffdAPI(uffd, want)
	if err != nil {
		return "", unsupported(FeatureUffdWP, fmt.Sprintf("UFFDIO_API with features %#x", want), err)
	}
	if _, err := raw.UffdRegister(uffd, addr, length, raw.UFFDIO_REGISTER_MODE_WP); err != nil {
		return "", unsupported(FeatureUffdWP, "UFFDIO_REGISTER in MODE_WP on the child's pages", err)
	}
	if err := raw.UffdWriteprotect(uffd, addr, length, raw.UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
		return "", unsupported(FeatureUffdWP, "UFFDIO_WRITEPROTECT", err)
	}

	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", h.pid()))
	if err != nil {
		return "", err
	}
	defer pm.Close()
	scan := func() ([]raw.PageRegion, error) {
		vec := make([]raw.PageRegion, 8)
		got, walkEnd, err := raw.PagemapScan(int(pm.Fd()), raw.PmScanArg{
			Flags:        raw.PM_SCAN_WP_MATCHING | raw.PM_SCAN_CHECK_WPASYNC,
			Start:        addr,
			End:          addr + length,
			CategoryMask: raw.PAGE_IS_WRITTEN,
			ReturnMask:   raw.PAGE_IS_WRITTEN,
		}, vec)
		if err != nil {
			return nil, unsupported(FeatureUffdWP, "PAGEMAP_SCAN", err)
		}
		if walkEnd != addr+length {
			return nil, unsupported(FeatureUffdWP, fmt.Sprintf("PAGEMAP_SCAN stopped at %#x, before %#x", walkEnd, addr+length), nil)
		}
		return got, nil
	}
	expect := func(step string, page int) error {
		got, err := scan()
		if err != nil {
			return err
		}
		var wantRegions []raw.PageRegion
		if page >= 0 {
			start := addr + uint64(page)*pageSize
			wantRegions = []raw.PageRegion{{Start: start, End: start + pageSize, Categories: raw.PAGE_IS_WRITTEN}}
		}
		if fmt.Sprint(got) != fmt.Sprint(wantRegions) {
			return unsupported(FeatureUffdWP, fmt.Sprintf("%s: PAGEMAP_SCAN reported %s, want %s", step, regionsString(got, addr), regionsString(wantRegions, addr)), nil)
		}
		return nil
	}
	if err := expect("right after UFFDIO_WRITEPROTECT", -1); err != nil {
		return "", err
	}
	// Page 1 was populated before the protection; page 3 never was
	// (UFFD_FEATURE_WP_UNPOPULATED). The second round also shows that the
	// first scan protected page 1 again.
	for _, page := range []int{1, 3} {
		line, err := h.call(fmt.Sprintf("write %d", page))
		if err != nil {
			return "", err
		}
		if _, err := parseAnswer(line); err != nil {
			return "", err
		}
		if err := expect(fmt.Sprintf("after a write to page %d", page), page); err != nil {
			return "", err
		}
	}
	if err := h.close(); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s enabled (kernel offers features %#x); written pages reported exactly, re-protected by the scan", uffdFeatureNames(want), api.Features), nil
}

// uffdFeatureNames names the write-protect features in f.
func uffdFeatureNames(f uint64) string {
	var names []string
	for _, n := range []struct {
		bit  uint64
		name string
	}{
		{raw.UFFD_FEATURE_WP_ASYNC, "WP_ASYNC"},
		{raw.UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED"},
		{raw.UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM"},
	} {
		if f&n.bit != 0 {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, "|")
}

// regionsString prints regions as page offsets from base.
func regionsString(rs []raw.PageRegion, base uint64) string {
	if len(rs) == 0 {
		return "nothing"
	}
	ps := uint64(os.Getpagesize())
	s := ""
	for i, r := range rs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("pages %d-%d (categories %#x)", (r.Start-base)/ps, (r.End-base)/ps-1, r.Categories)
	}
	return s
}

// uffdFeatures asks the kernel which userfaultfd features it has.
func uffdFeatures() (uint64, error) {
	f, err := raw.UffdFeatures()
	if err != nil {
		return 0, unsupported(FeatureUffdWP, "userfaultfd", err)
	}
	return f, nil
}

func helperUffd(say func(string, ...any), cmds *bufio.Scanner) {
	ps := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, uffdPages*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		sayErr(say, "mmap", err)
		return
	}
	// Never unmapped: the parent scans these pages until the helper exits.
	for p := range uffdPages - 1 {
		mem[p*ps] = 1
	}
	fd, via, err := raw.OpenUserfaultfd(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		sayErr(say, "userfaultfd", err)
		return
	}
	say("ok addr=%#x fd=%d via=%s", raw.AddrOf(mem), fd, via)
	for cmds.Scan() {
		var page int
		if _, err := fmt.Sscanf(cmds.Text(), "write %d", &page); err != nil || page < 0 || page >= uffdPages {
			say("err bad command %q", cmds.Text())
			continue
		}
		mem[page*ps]++
		say("ok")
	}
}
