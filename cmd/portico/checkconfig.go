package main

import (
	"fmt"
	"os"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
)

func runCheckConfig(args []string) error {
	fs := newFlagSet("check-config", "FILE\n\nValidates FILE; exits non-zero naming the offending key, and prints warnings for risky settings.")
	pos, help, err := parseArgs(fs, args, "FILE")
	if help || err != nil {
		return err
	}
	file := pos[0]
	cfg, err := config.Load(file)
	if err != nil {
		return err
	}
	if _, err := app.Build(cfg, nil); err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w)
	}
	fmt.Printf("%s: OK\n", file)
	return nil
}
