package kernel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/procmig/migrate/internal/raw"
)

// ProbeMMMap asks a helper child to set its own mm fields (code, data,
// brk, stack, args, env, auxv) with prctl(PR_SET_MM, PR_SET_MM_MAP), with
// the values it already has, which is how restore makes brk() and
// /proc/PID/cmdline work in the rebuilt process.
func ProbeMMMap(ctx context.Context) (string, error) {
	h, kv, err := askHelper(ctx, "mm-map", FeatureMMMap, "PR_SET_MM_MAP")
	if err != nil {
		return "", err
	}
	defer h.kill()
	if err := h.close(); err != nil {
		return "", err
	}
	return fmt.Sprintf("a child set its own mm map (struct prctl_mm_map of %s bytes, auxv %s bytes)", kv["size"], kv["auxv"]), nil
}

func helperMMMap(say func(string, ...any), _ *bufio.Scanner) {
	size, err := raw.PrctlMMMapSize()
	if err != nil {
		sayErr(say, "PR_SET_MM_MAP_SIZE", err)
		return
	}
	if size != 104 {
		say("err PR_SET_MM_MAP_SIZE is %d, this build knows struct prctl_mm_map of 104 bytes", size)
		return
	}
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		say("err %v", err)
		return
	}
	m, err := parseStatMM(stat)
	if err != nil {
		say("err /proc/self/stat: %v", err)
		return
	}
	brk, _, e := unix.RawSyscall(unix.SYS_BRK, 0, 0, 0)
	if e != 0 {
		sayErr(say, "brk(0)", e)
		return
	}
	m.Brk = uint64(brk)
	auxv, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		say("err %v", err)
		return
	}
	m.ExeFD = ^uint32(0) // keep /proc/self/exe
	if err := raw.PrctlSetMMMap(m, auxv); err != nil {
		sayErr(say, "PR_SET_MM_MAP", err)
		return
	}
	say("ok size=%d auxv=%d", size, len(auxv))
}

// parseStatMM takes the mm fields of a /proc/PID/stat line: startcode,
// endcode, startstack (fields 26-28) and start_data, end_data, start_brk,
// arg_start, arg_end, env_start, env_end (45-51), as numbered in proc(5).
// Brk and Auxv are not in stat and are left zero.
func parseStatMM(stat []byte) (raw.PrctlMMMap, error) {
	// comm (field 2) may hold spaces and parentheses: fields start after
	// the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return raw.PrctlMMMap{}, errors.New("no ')' after comm")
	}
	fields := bytes.Fields(stat[i+1:])
	// fields[0] is field 3 (state).
	get := func(n int) (uint64, error) {
		if n-3 >= len(fields) {
			return 0, fmt.Errorf("%d fields, want at least %d", len(fields)+2, n)
		}
		v, err := strconv.ParseUint(string(fields[n-3]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("field %d: %w", n, err)
		}
		return v, nil
	}
	var m raw.PrctlMMMap
	for _, f := range []struct {
		n   int
		dst *uint64
	}{
		{26, &m.StartCode}, {27, &m.EndCode}, {28, &m.StartStack},
		{45, &m.StartData}, {46, &m.EndData}, {47, &m.StartBrk},
		{48, &m.ArgStart}, {49, &m.ArgEnd}, {50, &m.EnvStart}, {51, &m.EnvEnd},
	} {
		v, err := get(f.n)
		if err != nil {
			return raw.PrctlMMMap{}, err
		}
		*f.dst = v
	}
	return m, nil
}
