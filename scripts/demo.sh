#!/usr/bin/env bash
# Demo of migrate's checkpoint/restore through files: start a small C
# program that counts and checks a 64 MiB buffer, dump it to a directory
# (which kills it), then restore it and watch it count on from where it
# stopped, with the same PID and its memory intact.
#
# Needs root, Go and gcc (`make demo` installs gcc). Prints
# "demo: ok pid=N counter_before=N counter_after=N" or exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

say() { printf 'demo: %s\n' "$*"; }
fail() {
	printf 'demo: FAILED: %s\n' "$*" >&2
	exit 1
}

[[ $(id -u) == 0 ]] || fail "needs root (ptrace, clone3 with a chosen PID)"

work=$(mktemp -d /tmp/migrate-demo.XXXXXX)
log=$work/counter.log
img=$work/image
pid=""

# state PID: the process state letter (R, S, Z, ...), or nothing if gone.
state() { sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true; }

# ours PID: the PID is a live process of this demo (not a zombie, and
# named like our program), so that cleanup never kills a stranger.
ours() {
	local s
	s=$(state "$1")
	[[ -n $s && $s != Z && $(cat "/proc/$1/comm" 2>/dev/null) == counter ]]
}

cleanup() {
	if [[ -n $pid ]] && ours "$pid"; then
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

# counter: the last counter value in the log.
counter() { tail -n 1 "$log" | sed -n 's/^counter=\([0-9]*\) .*/\1/p'; }

# wait_counter N: wait (up to 10 s) until the counter reaches N.
wait_counter() {
	local c
	for _ in $(seq 100); do
		c=$(counter)
		[[ -n $c && $c -ge $1 ]] && return 0
		sleep 0.1
	done
	fail "counter did not reach $1 (at ${c:-nothing}); log: $(tail -n 3 "$log")"
}

say "building bin/migrate and the counter program"
go build -o bin/migrate ./cmd/migrate
gcc -O2 -Wall -o "$work/counter" -x c - <<'EOF'
/* Every 200 ms: change one word of a 64 MiB heap buffer, keep a running
 * weighted sum of the buffer up to date, check it against a full
 * recomputation, and print the counter and the result. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WORDS ((64u << 20) / 8)

static uint64_t full_sum(const uint64_t *b) {
	uint64_t s = 0;
	for (uint64_t i = 0; i < WORDS; i++)
		s += b[i] * (i | 1);
	return s;
}

int main(void) {
	uint64_t *buf = malloc(WORDS * 8);
	if (!buf)
		return 1;
	for (uint64_t i = 0; i < WORDS; i++)
		buf[i] = (i * 0x9E3779B97F4A7C15ull) >> 40; /* compressible, not zero */
	uint64_t sum = full_sum(buf);
	struct timespec tick = {0, 200 * 1000 * 1000};
	for (uint64_t counter = 1;; counter++) {
		uint64_t i = (counter * 7919) % WORDS;
		buf[i] += counter;
		sum += counter * (i | 1);
		int ok = full_sum(buf) == sum;
		printf("counter=%llu sum=%016llx check=%s\n", (unsigned long long)counter,
		       (unsigned long long)sum, ok ? "ok" : "BAD");
		fflush(stdout);
		if (!ok)
			return 2;
		nanosleep(&tick, NULL);
	}
}
EOF

# The program's stdio goes to /dev/null and the log file: no pipe to this
# script, which would not survive the dump. Other fds this script inherited
# (a CI runner's pipes) are closed, so that the program has only what it
# opens itself.
(
	for fd in /proc/self/fd/*; do
		fd=${fd##*/}
		if ((fd > 2)); then eval "exec $fd>&-"; fi
	done 2>/dev/null
	exec "$work/counter" </dev/null >>"$log" 2>&1
) &
pid=$!
# Not a job of this script: bash reaps it still, without a "Killed" notice.
disown "$pid"
say "started counter, pid $pid"
wait_counter 5
say "counter is running: $(tail -n 1 "$log")"

say "dumping: bin/migrate dump --dir $img $pid"
bin/migrate dump --dir "$img" "$pid"
# The dump killed the program; bash reaps it, which frees its PID.
for _ in $(seq 50); do
	[[ -z $(state "$pid") ]] && break
	sleep 0.1
done
before=$(counter)
lines=$(wc -l <"$log")
[[ -n $before ]] || fail "no counter in the log"
sleep 1
[[ $(counter) == "$before" ]] || fail "counter moved after the dump: $before -> $(counter)"
[[ -z $(state "$pid") ]] || fail "pid $pid still exists after the dump (state $(state "$pid"))"
say "counter stopped at $before; the image:"
ls -l "$img"
bin/migrate show --dir "$img" | sed -n '1,12p'

say "restoring: bin/migrate restore --dir $img"
restored=$(bin/migrate restore --dir "$img")
[[ $restored == "$pid" ]] || fail "restored as pid '$restored', want $pid"
ours "$pid" || fail "restored pid $pid is not running (state '$(state "$pid")')"
wait_counter $((before + 5))
after=$(counter)

# The first line after the dump must continue the count, and every line
# since must have found the buffer intact.
next=$(sed -n "$((lines + 1))p" "$log")
[[ $next == "counter=$((before + 1)) "* ]] || fail "after restore the log went on with '$next', want counter=$((before + 1))"
bad=$(tail -n +"$((lines + 1))" "$log" | grep -v 'check=ok$' || true)
[[ -z $bad ]] || fail "the buffer check failed after restore: $bad"
say "restored as pid $pid, counting on: counter=$after"

kill -TERM "$pid"
for _ in $(seq 50); do
	s=$(state "$pid")
	[[ -z $s || $s == Z ]] && break
	sleep 0.1
done
s=$(state "$pid")
[[ -z $s || $s == Z ]] || fail "pid $pid did not end on SIGTERM (state $s)"
pid=""

echo "demo: ok pid=$restored counter_before=$before counter_after=$after"
