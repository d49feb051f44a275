package main

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/pflag"
)

// version is set at build time: go build -ldflags "-X main.version=...".
var version = "dev"

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "migrate %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

var versionCmd = &command{
	name:    "version",
	usage:   "",
	summary: "print the version",
	desc: `
Print the version of migrate and of the Go toolchain that built it.`,
	setup: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
		return func(_ context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected arguments: %q", args)
			}
			printVersion(e.stdout)
			return nil
		}
	},
}
