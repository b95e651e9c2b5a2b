package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// errUsage reports a usage error; the message naming the flag or argument
// at fault and the usage text are already printed.
var errUsage = errors.New("usage")

func exitCode(err error) int {
	if err == errUsage {
		return 2
	}
	return 1
}

// configFlag adds the -config flag that serve, certs and the admin
// commands share.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "/etc/portico/portico.yaml", "configuration `file`")
}

// newFlagSet makes a flag set whose -h prints a one-line synopsis first.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("portico "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: portico %s %s\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseArgs parses args into fs with flags and positional arguments in any
// order, as git and kubectl users expect: `portico move USER BACKEND -hold
// 30s` is `portico move -hold 30s USER BACKEND`. "--" ends the flags, for
// an argument that starts with "-". want names the positional arguments,
// optional ones in brackets ("USER", "[USER]"); a missing or extra one is a
// usage error that names it. -h is not an error: it reports help.
//
// A flag whose value is "--" (`-backend --`) is taken as the end of the
// flags too; no flag of portico has such a value.
func parseArgs(fs *flag.FlagSet, args []string, want ...string) (pos []string, help bool, err error) {
	for {
		// flag stops at the first non-flag, or after "--".
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, true, nil
			}
			return nil, false, errUsage // flag has printed the error and the usage
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	required := 0
	for _, w := range want {
		if !strings.HasPrefix(w, "[") {
			required++
		}
	}
	switch {
	case len(pos) < required:
		return nil, false, usageError(fs, "missing %s", want[len(pos)])
	case len(pos) > len(want):
		return nil, false, usageError(fs, "unexpected argument %q", pos[len(want)])
	}
	return pos, false, nil
}

// usageError prints what is wrong, then the usage, and returns errUsage.
func usageError(fs *flag.FlagSet, format string, a ...any) error {
	fmt.Fprintf(fs.Output(), "%s: %s\n", fs.Name(), fmt.Sprintf(format, a...))
	fs.Usage()
	return errUsage
}
