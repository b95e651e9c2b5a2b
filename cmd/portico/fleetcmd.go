package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/fleet"
	"github.com/portico-mail/portico/internal/app"
)

// backendDrain drains (no new logins; with -deadline, the remaining
// sessions are ended after it, spread over -window) or undrains a backend.
func backendDrain(args []string, drain bool) error {
	var deadline, window time.Duration
	action := "backend undrain"
	extra := func(*flag.FlagSet) {}
	if drain {
		action = "backend drain"
		extra = func(fs *flag.FlagSet) {
			fs.DurationVar(&deadline, "deadline", 0, "end the remaining sessions after this `duration` (0: let them end by themselves)")
			fs.DurationVar(&window, "window", 0, "spread those ends over this `duration` (default fleet.drain_window)")
		}
	}
	return adminCommand(action, "[-config FILE] [flags] NAME", args, []string{"NAME"}, extra, func(rt *app.App, cfg *config.Config, args []string) error {
		name := args[0]
		if err := checkBackend(rt, name); err != nil {
			return err
		}
		ctx, cancel := adminContext()
		defer cancel()
		if !drain {
			return undrain(ctx, rt, name)
		}
		return drainBackend(ctx, rt, name, deadline, window, cfg.Fleet.DrainWindow)
	})
}

func undrain(ctx context.Context, rt *app.App, name string) error {
	if err := rt.FleetState.Undrain(ctx, name); err != nil {
		return err
	}
	if err := fleet.CancelDrainKick(ctx, rt.Redis, rt.RedisPrefix, name); err != nil {
		return err
	}
	fmt.Printf("%s: undrained\n", name)
	return nil
}

func drainBackend(ctx context.Context, rt *app.App, name string, deadline, window, defaultWindow time.Duration) error {
	if err := rt.FleetState.Drain(ctx, name); err != nil {
		return err
	}
	fmt.Printf("%s: drained: no new logins\n", name)
	if deadline > 0 {
		if window <= 0 {
			window = defaultWindow
		}
		at := time.Now().Add(deadline)
		if err := fleet.DrainKick(ctx, rt.Redis, rt.RedisPrefix, name, at, window); err != nil {
			return err
		}
		fmt.Printf("%s: remaining sessions end from %s, spread over %s\n", name, at.UTC().Format(time.RFC3339), window)
	}
	return nil
}

func runKick(args []string) error {
	return userCommand("kick", args, nil, func(ctx context.Context, rt *app.App, _ *config.Config, user string) error {
		n, err := fleet.CountSessions(ctx, rt.Redis, rt.RedisPrefix, user)
		if err != nil {
			return err
		}
		if err := fleet.Kick(ctx, rt.Redis, rt.RedisPrefix, user); err != nil {
			return err
		}
		fmt.Printf("%s: kick sent to every proxy (%d session(s) open)\n", user, n)
		return nil
	})
}

func runMove(args []string) error {
	var hold time.Duration
	synopsis := "[-config FILE] [-hold DURATION] USER BACKEND\n\nRoutes USER to BACKEND, holds the user's new logins until the old sessions are gone, then lets them through to the new backend."
	flags := func(fs *flag.FlagSet) {
		fs.DurationVar(&hold, "hold", 0, "hold new logins at most this `duration` (default fleet.move_hold)")
	}
	return adminCommand("move", synopsis, args, []string{"USER", "BACKEND"}, flags, func(rt *app.App, cfg *config.Config, args []string) error {
		user, err := normalizeUser(cfg, args[0])
		if err != nil {
			return err
		}
		backend := args[1]
		if err := checkBackend(rt, backend); err != nil {
			return err
		}
		if hold <= 0 {
			hold = cfg.Fleet.MoveHold
		}
		ctx, cancel := adminContextFor(hold + 10*time.Second)
		defer cancel()
		if err := fleet.Move(ctx, rt.Redis, rt.RedisPrefix, rt.RedisRouter, user, backend, fleet.MoveOptions{Hold: hold}); err != nil {
			return err
		}
		fmt.Printf("%s: moved to %s\n", user, backend)
		return nil
	})
}

func runSessions(args []string) error {
	synopsis := "[-config FILE] [-limit N] [-count] [USER]\n\nLists live sessions across the fleet: a user's sorted by start, or every\nsession streamed proxy by proxy (paged from Redis, never read whole)."
	var limit int
	var countOnly bool
	extra := func(fs *flag.FlagSet) {
		fs.IntVar(&limit, "limit", 0, "list at most `N` sessions (0: all)")
		fs.BoolVar(&countOnly, "count", false, "print only the number of sessions")
	}
	return adminCommand("sessions", synopsis, args, []string{"[USER]"}, extra, func(rt *app.App, cfg *config.Config, args []string) error {
		var user string
		if len(args) == 1 {
			var err error
			if user, err = normalizeUser(cfg, args[0]); err != nil {
				return err
			}
		}
		if limit < 0 {
			return fmt.Errorf("-limit %d: must be 0 or more", limit)
		}
		if countOnly {
			ctx, cancel := adminContext()
			defer cancel()
			n, err := fleet.CountSessions(ctx, rt.Redis, rt.RedisPrefix, user)
			if err != nil {
				return err
			}
			fmt.Printf("%d session(s)\n", n)
			return nil
		}
		return printSessions(rt, user, limit)
	})
}

// sessionPage is how many lines are aligned together: a listing of every
// session is printed as it streams in, a page at a time.
const sessionPage = 1000

func printSessions(rt *app.App, user string, limit int) error {
	// Streaming two million sessions takes longer than one admin action.
	ctx, cancel := adminContextFor(10 * time.Minute)
	defer cancel()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tPROXY\tLISTENER\tCLIENT\tBACKEND\tSINCE\tTO BACKEND\tTO CLIENT")
	n := 0
	errLimit := errors.New("limit reached")
	print := func(r fleet.Record) error {
		if limit > 0 && n == limit {
			return errLimit
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", r.User, r.Proxy, r.Listener, r.Client, r.Backend,
			r.Since.UTC().Format(time.RFC3339), r.BytesToBackend, r.BytesToClient)
		if n++; n%sessionPage == 0 {
			tw.Flush()
		}
		return nil
	}
	var err error
	if user != "" {
		var recs []fleet.Record
		if recs, err = fleet.ListSessions(ctx, rt.Redis, rt.RedisPrefix, user); err == nil {
			for _, r := range recs {
				if err = print(r); err != nil {
					break
				}
			}
		}
	} else {
		err = fleet.ScanSessions(ctx, rt.Redis, rt.RedisPrefix, print)
	}
	tw.Flush()
	if errors.Is(err, errLimit) {
		fmt.Printf("%d session(s) shown (-limit %d)\n", n, limit)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Printf("%d session(s)\n", n)
	return nil
}
