package main

import (
	"fmt"
	"os"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
)

// runCheckConfig validates a config the way serve would load it, without
// opening a socket or contacting Redis, a backend or an ACME CA, so that
// it can run as systemd's ExecStartPre (and before `portico reload`): exit
// 0 when serve would start, 1 naming the key at fault, 2 for a usage
// error. The file comes as FILE or, like every other command, -config.
func runCheckConfig(args []string) error {
	fs := newFlagSet("check-config", "FILE | -config FILE\n\nValidates FILE; exits non-zero naming the offending key, and prints warnings for risky settings.")
	flagFile := fs.String("config", "", "configuration `file` (instead of FILE)")
	pos, help, err := parseArgs(fs, args, "[FILE]")
	if help || err != nil {
		return err
	}
	file := *flagFile
	switch {
	case len(pos) == 1 && file != "" && pos[0] != file:
		return usageError(fs, "FILE %q and -config %q: give one", pos[0], file)
	case len(pos) == 1:
		file = pos[0]
	case file == "":
		return usageError(fs, "missing FILE (or -config FILE)")
	}
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
