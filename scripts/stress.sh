#!/usr/bin/env bash
# stress.sh: run tests on a loaded machine, as CI and users' hosts are.
# A hog (e2e/cmd/hog) keeps one CPU busy and rewrites a working set of
# memory while the tests run; a test that fails here is a product bug or a
# test that assumed timing, never "flaky".
#
#   scripts/stress.sh              the two-node e2e tests (TestNode*), 5 times each
#   scripts/stress.sh -- CMD ...   any command under the same load
#                                  (e.g. scripts/stress.sh -- make test)
#
# Environment:
#   STRESS_RUN    go test -run pattern (default ^TestNode)
#   STRESS_PKGS   packages (default ./e2e)
#   STRESS_COUNT  runs of each test (default 5)
#   STRESS_CPUS   CPUs kept busy (default 1)
#   STRESS_MEM    MiB of memory kept rewritten (default 2048)
#   STRESS_FOR    the hog's own time limit (default 90m)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH=$PATH:/usr/local/go/bin

run=${STRESS_RUN:-^TestNode}
pkgs=${STRESS_PKGS:-./e2e}
count=${STRESS_COUNT:-5}
cpus=${STRESS_CPUS:-1}
mem=${STRESS_MEM:-2048}
limit=${STRESS_FOR:-90m}

hog=$(mktemp -d)/hog
go build -o "$hog" ./e2e/cmd/hog
"$hog" -cpus "$cpus" -mem "$mem" -for "$limit" -parent $$ &
hogpid=$!
trap 'kill "$hogpid" 2>/dev/null; wait "$hogpid" 2>/dev/null; rm -rf "$(dirname "$hog")"' EXIT

start=$(date +%s)
if [ "${1:-}" = "--" ]; then
	shift
	echo "stress: $* (under load: $cpus CPU(s), $mem MiB)"
	set +e
	"$@"
	rc=$?
	set -e
else
	echo "stress: go test -count=$count -run '$run' $pkgs (under load: $cpus CPU(s), $mem MiB)"
	set +e
	go test -count="$count" -timeout 80m -run "$run" $pkgs
	rc=$?
	set -e
fi
echo "stress: exit status $rc after $(( $(date +%s) - start )) s"
exit $rc
