// Command portico is an authenticating IMAP proxy and load balancer.
//
//	portico serve -config /etc/portico/portico.yaml
//	portico reload -config /etc/portico/portico.yaml
//	portico upgrade -config /etc/portico/portico.yaml
//	portico demo
//	portico check-config /etc/portico/portico.yaml
//	portico certs -config /etc/portico/portico.yaml
//	portico route explain alice@example.com
//	portico move alice@example.com dovecot2
//	portico version
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name, summary string
	run           func(args []string) error
}

var commands = []command{
	{"serve", "run the proxy from a config file", runServe},
	{"reload", "make the running serve load its config file again", runReload},
	{"upgrade", "hand the running serve's sockets to the binary now installed", runUpgrade},
	{"demo", "run a self-contained demo with in-memory backends", runDemo},
	{"check-config", "validate a config file and print warnings", runCheckConfig},
	{"certs", "list the certificates in service (files and ACME cache)", runCerts},
	{"route", "get, set, delete or explain a user's route (Redis)", runRoute},
	{"backend", "list, drain, undrain or weight backends fleet-wide", runBackend},
	{"kick", "end a user's sessions on every proxy", runKick},
	{"move", "route a user to another backend and move its sessions", runMove},
	{"sessions", "list live sessions fleet-wide", runSessions},
	{"limits", "show or clear the failed-login limits of an address or user (Redis)", runLimits},
	{"bench", "generate IMAP or POP3 load and measure a server (capacity planning)", runBench},
	{"version", "print the version", runVersion},
}

func usage() {
	fmt.Fprintf(os.Stderr, "Usage: portico <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-13s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'portico <command> -h' for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintf(os.Stderr, "portico: missing command\n\n")
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "-help" || name == "--help" || name == "help" {
		usage()
		return
	}
	for _, c := range commands {
		if c.name == name {
			if err := c.run(os.Args[2:]); err != nil {
				if err != errUsage {
					fmt.Fprintf(os.Stderr, "portico %s: %v\n", name, err)
				}
				os.Exit(exitCode(err))
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "portico: unknown command %q\n\n", name)
	usage()
	os.Exit(2)
}
