# migrate: build, test, benchmark, demo. Meant to run as root on Debian with
# Go installed; `make test` and `make demo` install the rest with apt-get.

SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin

GO        ?= go
BIN       := bin/migrate
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
PKGS      ?= ./...
# make bench-go BENCH=Checkpoint PKGS=./e2e BENCHTIME=3x. The default, Go's
# 1s, runs a slow benchmark (a whole dump and restore, which takes its own
# samples) once and a fast one many times.
BENCH     ?= .
BENCHTIME ?= 1s

# command:package pairs for the tools tests and the demo need. The e2e
# tests run Debian's python3 by its path, and redis-server (redis-cli,
# redis-benchmark) and nginx (nginx-light: a master and its workers, moved
# live as a tree) as real programs to dump, restore and move. The two-node
# cluster (e2e/cluster: the node tests and the demo) needs ip, nsenter,
# unshare, and arping for the hooks that move its service address.
# PostgreSQL (Debian 12's 15) is another real program the tests move.
DEPS := gcc:gcc /usr/bin/python3:python3 sleep:coreutils redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools \
	/usr/lib/postgresql/15/bin/postgres:postgresql /usr/sbin/nginx:nginx-light \
	ip:iproute2 nsenter:util-linux unshare:util-linux arping:iputils-arping groff:groff-base

.PHONY: all build deps test vmtest-live stress fuzz vet fmt fmt-check bench bench-go demo deb deb-test clean

all: build

build:
	$(GO) build -ldflags '-X main.version=$(VERSION)' -o $(BIN) ./cmd/migrate

# Install what is missing, and only that.
deps:
	@missing=""; \
	for d in $(DEPS); do \
		command -v "$${d%%:*}" >/dev/null 2>&1 || missing="$$missing $${d#*:}"; \
	done; \
	[ -e /usr/include/stdio.h ] || missing="$$missing libc6-dev"; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

# Unit and integration tests; the integration tests need root. Then every
# fuzz target for a few seconds (FUZZTIME; longer by hand, e.g.
# make fuzz FUZZTIME=5m). Then the dirty-tracker tests under Debian's 6.1
# cloud kernel in qemu, the one kernel here with soft-dirty.
test: deps vet fmt-check
	$(GO) test -count=1 $(PKGS)
	$(MAKE) --no-print-directory fuzz
	./scripts/vmtest.sh
	$(MAKE) --no-print-directory vmtest-live

# Live migration between this host and a VM running Debian's 6.1 cloud
# kernel (qemu, TCG; e2e TestVMLive), and from a VM running its 6.12 to
# that one: prints which tracker each side used, the downtimes and the
# VMs' boot times (the whole log if it fails).
vmtest-live:
	@kdir=$$(./scripts/vmkernel.sh) || exit 1; kdir2=$$(./scripts/vmkernel.sh linux-image-6.12-cloud-amd64) || exit 1; out=$$(mktemp); \
	MIGRATE_VM_KERNEL=$$kdir MIGRATE_VM_KERNEL2=$$kdir2 $(GO) test -count=1 -v -run '^TestVMLive$$' -timeout 30m ./e2e >$$out 2>&1; rc=$$?; \
	if [ $$rc = 0 ]; then grep -E 'vmtest-live:|--- (PASS|FAIL|SKIP)|^(ok|FAIL)' $$out | sed 's/^ *[a-z_]*\.go:[0-9]*: //'; \
	else cat $$out; fi; rm -f $$out; exit $$rc

# The two-node e2e tests, 5 times each, while e2e/cmd/hog keeps a CPU busy
# and rewrites 2 GiB (scripts/stress.sh; STRESS_RUN, STRESS_COUNT, ...).
# Any command under the same load: scripts/stress.sh -- make test.
stress: deps
	./scripts/stress.sh

FUZZTIME ?= 3s
# Each Fuzz function of each package, one at a time (go test -fuzz takes one).
fuzz:
	@set -e; out=$$(mktemp); trap 'rm -f $$out' EXIT; \
	for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		dir=$$(dirname $$f); \
		for fn in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "fuzz $$dir $$fn ($(FUZZTIME))"; \
			run() { $(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s ./$$dir >$$out 2>&1; }; \
			if ! run; then \
				if grep -q 'Failing input written to' $$out; then cat $$out; exit 1; fi; \
				echo "fuzz: $$dir $$fn stopped without a failing input (a busy machine?); once more"; \
				run || { cat $$out; echo "fuzz: $$dir $$fn failed"; exit 1; }; \
			fi; \
		done; \
	done; echo "fuzz: every target ran $(FUZZTIME) without a failure"

vet:
	$(GO) vet $(PKGS)

fmt:
	gofmt -l -w .

fmt-check:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The migration benchmark (e2e/cmd/bench): a 1 GiB process idle and
# rewriting 50 and 200 MB/s, and redis with a million keys under a
# client's load, moved between the two nodes of a cluster on this machine,
# each next to an offline dump and restore. Prints a table and writes
# every run to bench.json; about 4 minutes. Flags in BENCHFLAGS, e.g.
# make bench BENCHFLAGS='-runs 3 -scenarios idle,redis' (bin/bench -h).
BENCHFLAGS ?=
bench: deps build
	$(GO) build -o bin/bench ./e2e/cmd/bench
	bin/bench -migrate $(BIN) $(BENCHFLAGS)

# The Go benchmarks only (-run '^$$' skips the tests).
bench-go: deps
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -count=1 -timeout 60m $(PKGS)

# Move a loaded redis from node A to node B of a two-node cluster on this
# machine while a client on a third node writes and reads through the
# service address (e2e/cmd/demo). Ends with "demo: ok ..." or fails.
demo: deps build
	$(GO) build -o bin/demo ./e2e/cmd/demo
	bin/demo -migrate $(BIN)

# The Debian package dist/migrate_VERSION_amd64.deb, made with nfpm (run
# with go run at a fixed version; the first run fetches and builds it):
# /usr/bin/migrate, migrate(1), the migrate-serve unit, /etc/migrate with
# a secret generated at install (scripts/deb.sh, packaging/). DEB_VERSION
# overrides the version.
deb:
	./scripts/deb.sh

# Build the package, check it, install it into a scratch root with dpkg
# --root, run it, verify its unit, remove and purge it (scripts/deb-test.sh;
# root). Not part of make test: the first run builds nfpm (a minute).
deb-test:
	./scripts/deb-test.sh

clean:
	rm -rf bin dist
