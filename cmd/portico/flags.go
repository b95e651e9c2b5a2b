package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

// errUsage reports bad flags; the flag package has printed the reason.
var errUsage = errors.New("usage")

func exitCode(err error) int {
	if err == errUsage {
		return 2
	}
	return 1
}

// newFlagSet makes a flag set whose -h prints a one-line synopsis first.
// configFlag adds the -config flag that serve, certs and the admin
// commands share.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "/etc/portico/portico.yaml", "configuration `file`")
}

func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("portico "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: portico %s %s\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; -h is not an error.
func parseFlags(fs *flag.FlagSet, args []string) (help bool, err error) {
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, errUsage
	}
	return false, nil
}
