package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/app"
	ptls "github.com/portico-mail/portico/tls"
)

func runCerts(args []string) error {
	fs := newFlagSet("certs", "-config FILE\n\nLists the certificates Portico serves: the files of the config and ACME's cache (read only, no CA is contacted).")
	path := configFlag(fs)
	if _, help, err := parseArgs(fs, args); help || err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	rt, err := app.Build(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	defer rt.Close()
	var infos []ptls.Info
	if rt.Store != nil {
		infos = append(infos, rt.Store.Certificates()...)
	}
	if rt.ACME != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cached, err := rt.ACME.Cached(ctx)
		if err != nil {
			return err
		}
		if len(cached) == 0 {
			fmt.Fprintf(os.Stderr, "acme: no certificate cached yet for %s\n", strings.Join(rt.ACME.Hostnames(), ", "))
		}
		infos = append(infos, cached...)
	}
	printCerts(os.Stdout, infos, time.Now())
	return nil
}

func printCerts(w io.Writer, infos []ptls.Info, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMES\tISSUER\tKEY\tEXPIRES\tSOURCE")
	for _, i := range infos {
		left := i.NotAfter.Sub(now).Round(time.Hour)
		expires := fmt.Sprintf("%s (%s)", i.NotAfter.UTC().Format(time.DateOnly), days(left))
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", strings.Join(i.Names, ","), i.Issuer, i.KeyType, expires, i.Source)
	}
	tw.Flush()
}

func days(d time.Duration) string {
	if d < 0 {
		return "expired"
	}
	return fmt.Sprintf("%dd left", int(d.Hours()/24))
}
