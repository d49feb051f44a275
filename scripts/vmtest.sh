#!/usr/bin/env bash
# vmtest.sh: run the dirty-tracker tests (source/track, -test.run Track) under
# Debian's cloud kernel in qemu (TCG, no KVM needed), whose kernel has
# CONFIG_MEM_SOFT_DIRTY, which the hosts here lack. The VM boots an
# initramfs holding only a static /init (e2e/vm/init) and the static test
# binary; the serial console is the test log.
#
# Prints, last, one line:
#   vmtest: N passed, M failed, K skipped (kernel X)
# and exits non-zero if a test failed or the VM did not finish.
#
# Environment:
#   VMTEST_RUN      tests to run, default Track
#   VMTEST_BENCH    benchmarks to run afterwards (e.g. TrackDirty), default none
#   VMTEST_BENCHMB  size of the benchmark region in MiB (default 128)
#   VMTEST_TIMEOUT  seconds before the VM is killed, default 300
#   VMTEST_MEM      VM memory in MiB, default 512
#   VMTEST_CACHE    download cache, default ~/.cache/migrate-vmtest
#   VMTEST_KEEP=1   keep the work directory (initramfs, serial log)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
timeout_s=${VMTEST_TIMEOUT:-300}
mem=${VMTEST_MEM:-512}
run=${VMTEST_RUN:-Track}
bench=${VMTEST_BENCH:-}
benchmb=${VMTEST_BENCHMB:-128}
export PATH=$PATH:/usr/local/go/bin

log() { echo "vmtest: $*" >&2; }
die() {
	log "$*"
	echo "vmtest: 0 passed, 1 failed, 0 skipped (kernel ${kver:-unknown})"
	exit 1
}

# --- qemu and the kernel (scripts/vmkernel.sh) ---------------------------
kdir=$("$root/scripts/vmkernel.sh") || die "no kernel (scripts/vmkernel.sh failed)"
kpkg=$(basename "$kdir")
vmlinuz=$kdir/vmlinuz
kver=$(cat "$kdir/release" 2>/dev/null || echo "$kpkg")

# --- the initramfs: /init and the test binary, both static -----------------
work=$(mktemp -d /tmp/vmtest.XXXXXX)
if [ "${VMTEST_KEEP:-}" != 1 ]; then
	trap 'rm -rf "$work"' EXIT
else
	log "work directory $work"
fi
mkdir -p "$work/root"
(cd "$root" && CGO_ENABLED=0 go test -c -o "$work/root/track.test" ./source/track) || die "building the test binary failed"
(cd "$root" && CGO_ENABLED=0 go build -o "$work/root/init" ./e2e/vm/init) || die "building /init failed"
(cd "$work/root" && find . -mindepth 1 | cpio -o -H newc --quiet) >"$work/initrd" || die "cpio failed"

# --- boot -------------------------------------------------------------------
append="console=ttyS0 panic=-1 quiet migrate.run=$run"
if [ -n "$bench" ]; then
	append="$append migrate.bench=$bench migrate.benchmb=$benchmb"
fi
# A kernel that dies as it boots, before the init runs, is booted again (at
# most 3 times): under TCG, Debian's 6.12 once met an int3 of its own text
# patching in a timer interrupt, 1.4 s into the boot.
for attempt in 1 2 3; do
	log "booting $kver ($kpkg) with $(du -h "$work/initrd" | cut -f1) of initramfs"
	start=$(date +%s)
	set +e
	timeout "$timeout_s" qemu-system-x86_64 -nographic -no-reboot -m "$mem" -smp 2 \
		-cpu max -kernel "$vmlinuz" -initrd "$work/initrd" -append "$append" \
		</dev/null 2>&1 | tr -d '\r' | tee "$work/serial.log"
	qrc=${PIPESTATUS[0]}
	set -e
	log "VM ran $(($(date +%s) - start)) s (qemu exit $qrc)"
	if grep -q 'Kernel panic' "$work/serial.log" && ! grep -q '^vmtest-kernel: ' "$work/serial.log" && [ "$attempt" -lt 3 ]; then
		log "the kernel died as it booted, before the init ran: booting again"
		continue
	fi
	break
done

# --- results ----------------------------------------------------------------
serial=$work/serial.log
kseen=$(sed -n 's/^vmtest-kernel: //p' "$serial" | head -1)
[ -n "$kseen" ] && kver=$kseen
# Leaf tests only: a test with subtests reports itself too.
read -r passed failed skipped < <(
	grep -E '^\s*--- (PASS|FAIL|SKIP): ' "$serial" |
		awk '{ st[$3] = $2; name[NR] = $3 }
		END {
			for (n in st) for (m in st) if (index(m, n "/") == 1) { parent[n] = 1; break }
			p = f = s = 0
			for (n in st) if (!(n in parent)) {
				if (st[n] == "PASS:") p++; else if (st[n] == "FAIL:") f++; else s++
			}
			print p, f, s
		}'
)
result=$(sed -n 's/^vmtest-result: exit=//p' "$serial" | head -1)
echo
echo "vmtest: backends on kernel $kver:"
for b in uffd-wp soft-dirty hash; do
	grep -E "^\s*--- (PASS|FAIL|SKIP): TestTrack[A-Za-z]*/$b " "$serial" |
		awk -v b="$b" '{ n[$2]++ } END {
			printf "vmtest:   %-10s %d passed, %d failed, %d skipped\n", b ":", n["PASS:"], n["FAIL:"], n["SKIP:"] }'
done
if [ -n "$bench" ]; then
	grep -E '^Benchmark' "$serial" | sed 's/^/vmtest:   /' || true
fi
rc=0
if [ -z "$result" ]; then
	log "the VM did not report a result (timeout after ${timeout_s}s, or a crash): see the log above"
	failed=$((failed + 1))
	rc=1
elif [ "$result" != 0 ]; then
	rc=1
	[ "$failed" -gt 0 ] || failed=1
fi
[ "$failed" -eq 0 ] || rc=1
echo "vmtest: $passed passed, $failed failed, $skipped skipped (kernel $kver)"
exit $rc
