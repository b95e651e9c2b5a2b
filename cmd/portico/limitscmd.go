package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
	"github.com/portico-mail/portico/limits"
)

// portico limits show|clear IP|USER: the fleet-wide failed-login limits
// (limits.brute_force) of an address or a user, as held in Redis.
func runLimits(args []string) error {
	return subcommand("limits", args, map[string]func([]string) error{
		"show":  func(a []string) error { return limitsCommand("show", a) },
		"clear": func(a []string) error { return limitsCommand("clear", a) },
	}, "show|clear [-config FILE] IP|USER")
}

func limitsCommand(action string, args []string) error {
	synopsis := "[-config FILE] IP|USER\n\nIP is a client address (an IPv6 address stands for its limits.ipv6_prefix\nnetwork) or that network in CIDR notation; anything else is a user name."
	return adminCommand("limits "+action, synopsis, args, []string{"IP|USER"}, nil, func(rt *app.App, cfg *config.Config, args []string) error {
		l := rt.Limiter
		if l == nil {
			return errors.New("limits.brute_force is disabled in the config")
		}
		ctx, cancel := adminContext()
		defer cancel()
		arg := args[0]
		if limits.IsAddr(arg) {
			if action == "clear" {
				net, err := l.ClearAddr(ctx, arg)
				if err != nil {
					return err
				}
				fmt.Printf("%s: cleared (the counters of users from it stay: clear the user for those)\n", net)
				return nil
			}
			st, err := l.ShowAddr(ctx, arg)
			if err != nil {
				return err
			}
			t := l.Config().IP
			fmt.Printf("%s: %s\n", st.Net, describe(st.Count, t))
			return nil
		}
		user, err := normalizeUser(cfg, arg)
		if err != nil {
			return err
		}
		if action == "clear" {
			if err := l.ClearUser(ctx, user); err != nil {
				return err
			}
			fmt.Printf("%s: cleared (counters, per address too, and recent wrong passwords; known addresses stay)\n", user)
			return nil
		}
		st, err := l.ShowUser(ctx, user)
		if err != nil {
			return err
		}
		c := l.Config()
		fmt.Printf("%s: %s\n", user, describe(st.Count, c.User))
		for _, net := range limits.SortedNets(st.ByAddr) {
			fmt.Printf("  from %s: %s\n", net, describe(st.ByAddr[net], c.UserIP))
		}
		if len(st.Known) == 0 {
			fmt.Println("  known addresses: none")
		}
		for _, net := range limits.SortedNets(st.Known) {
			fmt.Printf("  known address %s until %s\n", net, st.Known[net].UTC().Format(time.RFC3339))
		}
		fmt.Printf("  recent wrong passwords: %d (kept as keyed hashes)\n", st.WrongPasswords)
		return nil
	})
}

// describe says where a counter stands against its tier.
func describe(c limits.Count, t limits.Tier) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%.1f failures (delay from %d, block at %d, %d forgotten per %s)", c.Failures, t.DelayAfter, t.BlockAfter, t.BlockAfter, config.FormatDuration(t.Window))
	if c.BlockedUntil.IsZero() {
		b.WriteString("; not blocked")
	} else {
		fmt.Fprintf(&b, "; blocked until %s (%s left)", c.BlockedUntil.UTC().Format(time.RFC3339), time.Until(c.BlockedUntil).Round(time.Second))
	}
	return b.String()
}
