package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

func runVersion(args []string) error {
	fs := newFlagSet("version", "")
	if _, help, err := parseArgs(fs, args); help || err != nil {
		return err
	}
	fmt.Printf("portico %s (%s %s/%s)\n", binaryVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}

// binaryVersion is the version set at build time, else the module's.
func binaryVersion() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	return v
}
