package main

import (
	"strconv"

	"github.com/spf13/pflag"
)

// pflag 1.1 shows boolean flags in help as "--json[=true|false]" and
// counters as "-v, --verbose count". The values below render as plain
// switches ("--json", "-v, --verbose") and parse the same way.

// switchValue is a boolean flag.
type switchValue bool

func (b *switchValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*b = switchValue(v)
	return nil
}

func (b *switchValue) String() string   { return strconv.FormatBool(bool(*b)) }
func (b *switchValue) Type() string     { return "boolfunc" } // no value name in help
func (b *switchValue) IsBoolFlag() bool { return true }

// boolFlag declares a boolean switch, false by default.
func boolFlag(fs *pflag.FlagSet, p *bool, name, short, usage string) {
	*p = false
	f := fs.VarPF((*switchValue)(p), name, short, usage)
	f.NoOptDefVal = "true"
}

// counterValue counts how often a flag is given (-v, -vv).
type counterValue int

func (c *counterValue) Set(s string) error {
	if s == "true" {
		*c++
		return nil
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return err
	}
	*c = counterValue(v)
	return nil
}

func (c *counterValue) String() string { return strconv.Itoa(int(*c)) }
func (c *counterValue) Type() string   { return "boolfunc" }

// countFlag declares a counter, 0 by default.
func countFlag(fs *pflag.FlagSet, p *int, name, short, usage string) {
	*p = 0
	f := fs.VarPF((*counterValue)(p), name, short, usage)
	f.NoOptDefVal = "true"
}
