package main

import (
	"fmt"
	"os"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
)

func runCheckConfig(args []string) error {
	fs := newFlagSet("check-config", "FILE\n\nValidates FILE; exits non-zero naming the offending key, and prints warnings for risky settings.")
	if help, err := parseFlags(fs, args); help || err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	cfg, err := config.Load(fs.Arg(0))
	if err != nil {
		return err
	}
	if _, err := app.Build(cfg, nil); err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
	fmt.Printf("%s: OK\n", fs.Arg(0))
	return nil
}
