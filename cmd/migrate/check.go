package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/procmig/migrate/core/kernel"
)

var checkCmd = &command{
	name:    "check",
	usage:   "[FLAGS]",
	summary: "probe which kernel mechanisms work on this host",
	desc: `
Try, for real, each kernel mechanism migrate relies on, and print whether it
works here: ptrace seize, syscall injection, pidfd_getfd, clone3 with
set_tid, PR_SET_MM_MAP, process_vm_readv/writev, soft-dirty, userfaultfd
async write-protect with PAGEMAP_SCAN, TCP repair, the vdso layout, time
namespaces, the XSAVE features, and the cgroup v2 freezer. The
kernel configuration is never read: a mechanism works when using it works.
The probes run on short-lived child processes, which they reap.

Exits 0 whatever the kernel lacks, and 1 only if a probe could not run, so
that whether its mechanism works is unknown.`,
	examples: `  migrate check
  migrate check --json | python3 -c 'import json,sys; print([f["name"] for f in json.load(sys.stdin) if not f["ok"]])'`,
	setup: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
		var asJSON bool
		boolFlag(fs, &asJSON, "json", "", "print the results as a JSON array")
		return func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected arguments: %q", args)
			}
			feats := e.ops.check(ctx, kernel.CheckOptions{Inject: e.ops.inject})
			if asJSON {
				if err := writeJSON(e.stdout, feats); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(e.stdout, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "MECHANISM\tWORKS\tDETAIL")
				for _, f := range feats {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Name, f.Status(), f.Detail)
				}
				tw.Flush()
			}
			var failed []error
			for _, f := range feats {
				if f.ProbeFailed() {
					failed = append(failed, fmt.Errorf("%s: %w", f.Name, f.Err))
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d probe(s) could not run: %w", len(failed), errors.Join(failed...))
			}
			return nil
		}
	},
}
