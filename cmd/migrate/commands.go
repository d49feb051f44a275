package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"
)

// A command is one subcommand: its help text, and a setup function that
// declares its flags and returns the action to run with the remaining
// arguments.
type command struct {
	name     string
	usage    string // synopsis after "migrate NAME "
	summary  string // one line for the command list
	desc     string // paragraphs, already wrapped
	examples string // lines, already indented by two spaces
	setup    func(fs *pflag.FlagSet) func(ctx context.Context, e *env, args []string) error
}

// commands lists the subcommands in the order help shows them.
var commands []*command

func init() {
	commands = []*command{toCmd, serveCmd, recoverCmd, dumpCmd, restoreCmd, showCmd, checkCmd, versionCmd, helpCmd}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

const mainHelp = `Usage: migrate [-v] [--log-level LEVEL] COMMAND [FLAGS] [ARGS]
       migrate --to HOST:PORT [FLAGS] PID

migrate moves a running Linux process to another host (live migration) or
checkpoints it into a directory of files and restores it from them: the
process continues where it stopped, with the same PID, memory, registers,
signal state and open files.

Commands:
%s
Global flags (also accepted after the command):
%s
Exit status: 0 on success, 1 on failure, 2 on a usage error, 3 if not
permitted (migrate runs set-user-ID, or the user may not trace the process).

Run 'migrate help COMMAND' for the flags and examples of a command.
`

func printMainHelp(w io.Writer) {
	var list strings.Builder
	for _, c := range commands {
		fmt.Fprintf(&list, "  %-9s %s\n", c.name, c.summary)
	}
	fs := pflag.NewFlagSet("migrate", pflag.ContinueOnError)
	var common commonFlags
	common.add(fs)
	boolFlag(fs, new(bool), "version", "", "print the version and exit")
	boolFlag(fs, new(bool), "help", "h", "show this help")
	fmt.Fprintf(w, mainHelp, list.String(), fs.FlagUsages())
}

func printCommandHelp(w io.Writer, c *command) {
	fs := pflag.NewFlagSet("migrate "+c.name, pflag.ContinueOnError)
	fs.SortFlags = false
	c.setup(fs)
	var common commonFlags
	common.add(fs)
	boolFlag(fs, new(bool), "help", "h", "show this help")
	fmt.Fprintf(w, "Usage: migrate %s %s\n\n", c.name, c.usage)
	fmt.Fprintf(w, "%s\n", strings.TrimSpace(c.desc))
	fmt.Fprintf(w, "\nFlags:\n%s", fs.FlagUsages())
	if c.examples != "" {
		fmt.Fprintf(w, "\nExamples:\n%s\n", strings.TrimRight(c.examples, "\n"))
	}
}

var helpCmd = &command{
	name:    "help",
	usage:   "[COMMAND]",
	summary: "show help for migrate or for a command",
	desc: `
Print the help of migrate, or of COMMAND: synopsis, description, flags with
their defaults, and examples. 'migrate COMMAND --help' prints the same.`,
	examples: `  migrate help dump
  migrate help --man | gzip > migrate.1.gz`,
	setup: func(fs *pflag.FlagSet) func(context.Context, *env, []string) error {
		var man bool
		boolFlag(fs, &man, "man", "", "print the manual page migrate(1), every command's help, in roff")
		return func(_ context.Context, e *env, args []string) error {
			if man {
				if len(args) > 0 {
					return usagef("--man takes no command: it prints them all")
				}
				writeMan(e.stdout)
				return nil
			}
			switch len(args) {
			case 0:
				printMainHelp(e.stdout)
				return nil
			case 1:
				c := lookup(args[0])
				if c == nil {
					return usagef("unknown command %q", args[0])
				}
				printCommandHelp(e.stdout, c)
				return nil
			}
			return usagef("too many arguments: %q", args)
		}
	},
}
