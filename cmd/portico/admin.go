package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
	"github.com/portico-mail/portico/routing"
)

// The admin subcommands change or read fleet-wide state in Redis; every
// proxy of the fleet reacts through pub/sub. They load the same config
// file as serve, for the Redis address and the backend names.

// adminApp loads the config and builds everything but the listeners.
func adminApp(path string) (*app.App, *config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	rt, err := app.Build(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, nil, err
	}
	if rt.Redis == nil {
		rt.Close()
		return nil, nil, errors.New("routing.redis is not configured: fleet-wide state lives in Redis")
	}
	return rt, cfg, nil
}

func adminContext() (context.Context, context.CancelFunc) {
	return adminContextFor(30 * time.Second)
}

func adminContextFor(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// subcommand dispatches `portico NAME ACTION ARGS`. Flags may come before
// the action too (`portico route -config F get USER`): the action is then
// the first argument that names one, and the action's own parser gets the
// others, in order.
func subcommand(name string, args []string, actions map[string]func([]string) error, usage string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprintf(os.Stderr, "Usage: portico %s %s\n", name, usage)
		return nil
	}
	for i, a := range args {
		if run, ok := actions[a]; ok {
			return run(append(args[:i:i], args[i+1:]...))
		}
		if !strings.HasPrefix(a, "-") && i == 0 {
			break
		}
	}
	names := make([]string, 0, len(actions))
	for a := range actions {
		names = append(names, a)
	}
	sort.Strings(names)
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(os.Stderr, "portico %s: missing action (%s)\n", name, strings.Join(names, ", "))
	} else {
		fmt.Fprintf(os.Stderr, "portico %s: unknown action %q (%s)\n", name, args[0], strings.Join(names, ", "))
	}
	fmt.Fprintf(os.Stderr, "Usage: portico %s %s\n", name, usage)
	return errUsage
}

func runRoute(args []string) error {
	return subcommand("route", args, map[string]func([]string) error{
		"get":     routeGet,
		"set":     routeSet,
		"delete":  routeDelete,
		"explain": routeExplain,
	}, "get|set|delete|explain [-config FILE] [flags] USER")
}

// adminCommand runs an admin action: it parses -config, the action's own
// flags and the positional arguments named by want (see parseArgs), loads
// the config and calls do with the arguments.
func adminCommand(action, synopsis string, args []string, want []string, extra func(*flag.FlagSet), do func(rt *app.App, cfg *config.Config, args []string) error) error {
	fs := newFlagSet(action, synopsis)
	path := configFlag(fs)
	if extra != nil {
		extra(fs)
	}
	pos, help, err := parseArgs(fs, args, want...)
	if help || err != nil {
		return err
	}
	rt, cfg, err := adminApp(*path)
	if err != nil {
		return err
	}
	defer rt.Close()
	return do(rt, cfg, pos)
}

// userCommand runs an action taking one USER argument, normalised, with a
// bounded context.
func userCommand(action string, args []string, extra func(*flag.FlagSet), do func(ctx context.Context, rt *app.App, cfg *config.Config, user string) error) error {
	return adminCommand(action, "[-config FILE] USER", args, []string{"USER"}, extra, func(rt *app.App, cfg *config.Config, args []string) error {
		user, err := normalizeUser(cfg, args[0])
		if err != nil {
			return err
		}
		ctx, cancel := adminContext()
		defer cancel()
		return do(ctx, rt, cfg, user)
	})
}

func normalizeUser(cfg *config.Config, user string) (string, error) {
	u, err := routing.Normalize(user, cfg.Routing.DefaultDomain)
	if err != nil {
		return "", fmt.Errorf("user name %q: %w", user, err)
	}
	return u, nil
}

func routeGet(args []string) error {
	return userCommand("route get", args, nil, func(ctx context.Context, rt *app.App, _ *config.Config, user string) error {
		rec, err := rt.RedisRouter.GetRoute(ctx, user)
		if errors.Is(err, routing.ErrNotFound) {
			return fmt.Errorf("%s: no route", user)
		}
		if err != nil {
			return err
		}
		fmt.Printf("%s: %s\n", user, rec)
		return nil
	})
}

func routeSet(args []string) error {
	var rec routing.Record
	flags := func(fs *flag.FlagSet) {
		fs.StringVar(&rec.Backend, "backend", "", "configured backend `name`")
		fs.StringVar(&rec.Pool, "pool", "", "configured pool `name` (any healthy member, chosen by hash)")
		fs.StringVar(&rec.Addr, "addr", "", "literal backend `host:port`")
		fs.StringVar(&rec.Security, "security", "", "for -addr: plain, starttls or tls")
		fs.StringVar(&rec.ServerName, "server-name", "", "for -addr: TLS `name` to verify")
		fs.StringVar(&rec.Fallback, "fallback", "", "configured backend `name` used while the route's backend is down")
	}
	return userCommand("route set", args, flags, func(ctx context.Context, rt *app.App, _ *config.Config, user string) error {
		if btoi(rec.Backend != "")+btoi(rec.Pool != "")+btoi(rec.Addr != "") != 1 {
			return errors.New("give exactly one of -backend, -pool or -addr")
		}
		if rec.Backend != "" && rt.RedisRouter.Backends[rec.Backend] == nil {
			return fmt.Errorf("no backend %q in the config", rec.Backend)
		}
		if rec.Pool != "" && rt.RedisRouter.Pools[rec.Pool] == nil {
			return fmt.Errorf("no pool %q in the config", rec.Pool)
		}
		if rec.Fallback != "" && rt.RedisRouter.Backends[rec.Fallback] == nil {
			return fmt.Errorf("no backend %q in the config", rec.Fallback)
		}
		if err := rt.RedisRouter.SetRoute(ctx, user, rec); err != nil {
			return err
		}
		fmt.Printf("%s: %s\n", user, rec)
		return nil
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func routeDelete(args []string) error {
	return userCommand("route delete", args, nil, func(ctx context.Context, rt *app.App, _ *config.Config, user string) error {
		if err := rt.RedisRouter.DeleteRoute(ctx, user); err != nil {
			return err
		}
		fmt.Printf("%s: route deleted\n", user)
		return nil
	})
}

// routeExplain prints the decision path without side effects. Health is
// not probed from here: the explanation assumes every backend is up
// unless the fleet state says drained.
func routeExplain(args []string) error {
	return userCommand("route explain", args, nil, func(ctx context.Context, rt *app.App, cfg *config.Config, user string) error {
		if err := rt.FleetState.Load(ctx); err != nil {
			return err
		}
		if static := staticRoute(cfg, user); static != "" {
			fmt.Printf("%s: static route to %s (config file); Redis is not consulted\n", user, static)
			return nil
		}
		rt.RedisRouter.Health = nil // no probes from the CLI
		ex, err := rt.RedisRouter.Explain(ctx, user)
		if err != nil {
			return err
		}
		fmt.Printf("user %s\n", ex.User)
		for _, s := range ex.Steps {
			fmt.Printf("  %s\n", s)
		}
		if len(ex.Candidates) > 0 {
			fmt.Println("  candidates:")
			for _, c := range ex.Candidates {
				fmt.Printf("    %s\n", c)
			}
		}
		if ex.Err != nil {
			fmt.Printf("result: %v\n", ex.Err)
		} else {
			fmt.Printf("result: %s\n", ex.Backend)
		}
		return nil
	})
}

func staticRoute(cfg *config.Config, user string) string {
	for _, r := range cfg.Routing.Static {
		if u, err := routing.Normalize(r.User, cfg.Routing.DefaultDomain); err == nil && u == user {
			return r.Backend
		}
	}
	return ""
}

func runBackend(args []string) error {
	return subcommand("backend", args, map[string]func([]string) error{
		"list":    backendList,
		"drain":   func(a []string) error { return backendDrain(a, true) },
		"undrain": func(a []string) error { return backendDrain(a, false) },
		"weight":  backendWeight,
	}, "list|drain|undrain|weight [-config FILE] [NAME [WEIGHT]]")
}

func backendList(args []string) error {
	return adminCommand("backend list", "[-config FILE]", args, nil, nil, func(rt *app.App, _ *config.Config, _ []string) error {
		ctx, cancel := adminContext()
		defer cancel()
		return printBackends(ctx, rt)
	})
}

func printBackends(ctx context.Context, rt *app.App) error {
	states, err := rt.FleetState.List(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tSECURITY\tWEIGHT\tSTATE")
	names := make([]string, 0, len(rt.RedisRouter.Backends))
	for n := range rt.RedisRouter.Backends {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b := rt.RedisRouter.Backends[n]
		st := states[n]
		weight := strconv.Itoa(max(b.Weight, 1))
		if st.Weight > 0 {
			weight = fmt.Sprintf("%d (config %d)", st.Weight, max(b.Weight, 1))
		}
		state := "active"
		if st.Drained {
			state = "drained since " + st.DrainedSince.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n, b.Addr, b.TLS, weight, state)
	}
	return tw.Flush()
}

func checkBackend(rt *app.App, name string) error {
	if rt.RedisRouter.Backends[name] == nil {
		return fmt.Errorf("no backend %q in the config", name)
	}
	return nil
}

func backendWeight(args []string) error {
	synopsis := "[-config FILE] NAME WEIGHT (0 restores the configured weight)"
	return adminCommand("backend weight", synopsis, args, []string{"NAME", "WEIGHT"}, nil, func(rt *app.App, _ *config.Config, args []string) error {
		name := args[0]
		w, err := strconv.Atoi(args[1])
		if err != nil || w < 0 || w > routing.MaxWeight {
			return fmt.Errorf("weight must be 0..%d", routing.MaxWeight)
		}
		if err := checkBackend(rt, name); err != nil {
			return err
		}
		ctx, cancel := adminContext()
		defer cancel()
		if err := rt.FleetState.SetWeight(ctx, name, w); err != nil {
			return err
		}
		fmt.Printf("%s: weight %d\n", name, w)
		return nil
	})
}
