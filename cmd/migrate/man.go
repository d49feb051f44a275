package main

// The manual page migrate(1), generated from the commands' help texts
// (migrate help --man), so that it never says other than --help does.

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"
)

// writeMan writes migrate(1) in roff (man macros).
func writeMan(w io.Writer) {
	fmt.Fprintf(w, ".TH MIGRATE 1 \"\" \"migrate %s\" \"User Commands\"\n", roffQuoted(version))
	fmt.Fprintf(w, ".SH NAME\nmigrate \\- move a running Linux process to another host, or checkpoint and restore it\n")
	fmt.Fprintf(w, ".SH SYNOPSIS\n")
	for _, c := range commands {
		fmt.Fprintf(w, ".B migrate %s\n", c.name)
		if c.usage != "" {
			fmt.Fprintf(w, "%s\n", roffLine(c.usage))
		}
		fmt.Fprintf(w, ".br\n")
	}
	// The description of migrate itself: mainHelp's paragraph after the
	// usage lines, up to the command list.
	fmt.Fprintf(w, ".SH DESCRIPTION\n")
	intro := mainHelp[strings.Index(mainHelp, "\n\n")+2 : strings.Index(mainHelp, "\nCommands:")]
	writeParagraphs(w, intro)
	fmt.Fprintf(w, ".SH COMMANDS\n")
	for _, c := range commands {
		fmt.Fprintf(w, ".SS \"migrate %s %s\"\n", c.name, roffQuoted(c.usage))
		writeParagraphs(w, strings.TrimSpace(c.desc))
		fs := pflag.NewFlagSet("migrate "+c.name, pflag.ContinueOnError)
		fs.SortFlags = false
		c.setup(fs)
		if fs.HasFlags() {
			fmt.Fprintf(w, ".PP\nFlags:\n")
			writeFlags(w, fs)
		}
		if c.examples != "" {
			fmt.Fprintf(w, ".PP\nExamples:\n.RS 4\n.nf\n")
			for _, l := range strings.Split(strings.TrimRight(c.examples, "\n"), "\n") {
				fmt.Fprintf(w, "%s\n", roffLine(strings.TrimPrefix(l, "  ")))
			}
			fmt.Fprintf(w, ".fi\n.RE\n")
		}
	}
	fmt.Fprintf(w, ".SH GLOBAL OPTIONS\nAccepted before the command and after it.\n")
	fs := pflag.NewFlagSet("migrate", pflag.ContinueOnError)
	fs.SortFlags = false
	var common commonFlags
	common.add(fs)
	boolFlag(fs, new(bool), "version", "", "print the version and exit")
	boolFlag(fs, new(bool), "help", "h", "show this help")
	writeFlags(w, fs)
	fmt.Fprintf(w, ".SH EXIT STATUS\n")
	for _, e := range []struct {
		code int
		what string
	}{
		{exitOK, "success"},
		{exitFailure, "failure"},
		{exitUsage, "a usage error"},
		{exitDenied, "not permitted (migrate runs set-user-ID, or the user may not trace the process)"},
	} {
		fmt.Fprintf(w, ".TP\n.B %d\n%s\n", e.code, roffLine(e.what))
	}
	fmt.Fprintf(w, `.SH FILES
.TP
.I /etc/migrate/secret
The shared secret of the hosts (mode 0600), as the packaged service unit
migrate\-serve.service reads it with \-\-secret\-file.
.TP
.I /run/migrate
Records of migrations in progress on the source, read by migrate recover.
.SH SEE ALSO
.BR systemctl (1),
.BR unshare (1)
`)
}

// writeFlags writes one .TP entry per flag: its names, its value's name,
// its help and its default.
func writeFlags(w io.Writer, fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		name, usage := pflag.UnquoteUsage(f)
		var head strings.Builder
		if f.Shorthand != "" {
			fmt.Fprintf(&head, "\\fB\\-%s\\fR, ", roffDash(f.Shorthand))
		}
		fmt.Fprintf(&head, "\\fB\\-\\-%s\\fR", roffDash(f.Name))
		if name != "" && f.NoOptDefVal == "" {
			fmt.Fprintf(&head, " \\fI%s\\fR", roffDash(name))
		}
		fmt.Fprintf(w, ".TP\n%s\n%s", head.String(), roffLine(usage))
		if d := f.DefValue; f.NoOptDefVal == "" && d != "" && d != "0" && d != "[]" && d != "false" && d != "0s" {
			fmt.Fprintf(w, " (default: %s)", roffEscape(d))
		}
		fmt.Fprintf(w, "\n")
	})
}

// writeParagraphs writes text whose paragraphs are separated by blank
// lines: a paragraph with an indented line is kept as it is laid out.
func writeParagraphs(w io.Writer, text string) {
	for _, p := range strings.Split(strings.TrimSpace(text), "\n\n") {
		lines := strings.Split(strings.Trim(p, "\n"), "\n")
		pre := false
		for _, l := range lines {
			pre = pre || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")
		}
		if pre {
			fmt.Fprintf(w, ".PP\n.nf\n")
		} else {
			fmt.Fprintf(w, ".PP\n")
		}
		for _, l := range lines {
			fmt.Fprintf(w, "%s\n", roffLine(l))
		}
		if pre {
			fmt.Fprintf(w, ".fi\n")
		}
	}
}

// roffEscape escapes text for roff: backslashes.
func roffEscape(s string) string { return strings.ReplaceAll(s, `\`, `\e`) }

// roffDash escapes an option's name: hyphens are minus signs there.
func roffDash(s string) string { return strings.ReplaceAll(roffEscape(s), "-", `\-`) }

// roffLine escapes one line of text: a line that would start with a
// control character is protected, option-looking words get minus signs.
func roffLine(s string) string {
	s = roffEscape(s)
	words := strings.Split(s, " ")
	for i, wd := range words {
		if strings.HasPrefix(wd, "-") || strings.HasPrefix(wd, "'-") || strings.HasPrefix(wd, "[-") || strings.HasPrefix(wd, "(-") {
			words[i] = strings.ReplaceAll(wd, "-", `\-`)
		}
	}
	s = strings.Join(words, " ")
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// roffQuoted is s for a quoted macro argument.
func roffQuoted(s string) string { return strings.ReplaceAll(roffLine(s), `"`, `\(dq`) }
