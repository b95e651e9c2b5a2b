package main

import (
	"context"
	"fmt"
	"github.com/portico-mail/portico/internal/app"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

func runDemo(args []string) error {
	fs := newFlagSet("demo", "[flags]\n\nRuns Portico with two in-memory backends, static routes and a self-signed certificate: nothing to install.")
	imapsAddr := fs.String("imaps", "127.0.0.1:10993", "implicit TLS listener `address`")
	imapAddr := fs.String("imap", "127.0.0.1:10143", "STARTTLS listener `address`")
	pop3sAddr := fs.String("pop3s", "127.0.0.1:10995", "POP3 implicit TLS listener `address`")
	pop3Addr := fs.String("pop3", "127.0.0.1:10110", "POP3 STLS listener `address`")
	debug := fs.Bool("debug", false, "log at debug level")
	if _, help, err := parseArgs(fs, args); help || err != nil {
		return err
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	users := []membackend.User{
		{Name: "alice@example.test", Password: "alice-demo", Messages: 3},
		{Name: "bob@example.test", Password: "bob-demo", Messages: 2},
	}
	b1, err := membackend.Start("127.0.0.1:0", users[0])
	if err != nil {
		return err
	}
	defer b1.Close()
	b2, err := membackend.Start("127.0.0.1:0", users[1])
	if err != nil {
		return err
	}
	defer b2.Close()

	cert, err := ptls.SelfSigned("localhost", "127.0.0.1", "::1")
	if err != nil {
		return err
	}
	store, err := ptls.NewStore(cert)
	if err != nil {
		return err
	}
	rt := &app.App{
		Store: store,
		Server: &proxy.Server{
			Router: routing.NewStatic(map[string]*routing.Backend{
				users[0].Name: {Name: "backend-1", Addr: b1.Addr(), POP3Addr: b1.POP3Addr()},
				users[1].Name: {Name: "backend-2", Addr: b2.Addr(), POP3Addr: b2.POP3Addr()},
			}),
			TLSConfig: ptls.ServerConfig(store, 0),
			Logger:    logger,
			// A demo should answer a typo quickly.
			Limits: proxy.Limits{AuthFailureDelay: 500 * time.Millisecond},
		},
		Listeners: []app.Listener{
			{Addr: *imapsAddr, Config: proxy.Listener{Name: "imaps", Mode: proxy.ImplicitTLS}},
			{Addr: *imapAddr, Config: proxy.Listener{Name: "imap", Mode: proxy.StartTLS}},
			{Addr: *pop3sAddr, Config: proxy.Listener{Name: "pop3s", Mode: proxy.POP3S}},
			{Addr: *pop3Addr, Config: proxy.Listener{Name: "pop3", Mode: proxy.POP3}},
		},
	}
	fmt.Printf(`Portico demo: two in-memory backends, self-signed certificate.
  alice@example.test / alice-demo -> backend-1 (IMAP %s, POP3 %s)
  bob@example.test   / bob-demo   -> backend-2 (IMAP %s, POP3 %s)

Try (-k accepts the self-signed certificate).
IMAP (list the mailboxes, search INBOX, fetch the first message, STARTTLS):
  curl -k imaps://%[5]s/ -u alice@example.test:alice-demo
  curl -k 'imaps://%[5]s/INBOX?ALL' -u alice@example.test:alice-demo
  curl -k 'imaps://%[5]s/INBOX;UID=1' -u alice@example.test:alice-demo
  curl -k --ssl-reqd imap://%[6]s/ -u bob@example.test:bob-demo
  openssl s_client -quiet -connect %[5]s -alpn imap
POP3 (list the messages, fetch the first, STLS):
  curl -k pop3s://%[7]s/ -u alice@example.test:alice-demo
  curl -k pop3s://%[7]s/1 -u alice@example.test:alice-demo
  curl -k --ssl-reqd pop3://%[8]s/ -u bob@example.test:bob-demo

Press Ctrl-C to stop.
`, b1.Addr(), b1.POP3Addr(), b2.Addr(), b2.POP3Addr(), *imapsAddr, *imapAddr, *pop3sAddr, *pop3Addr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return rt.Serve(ctx, 5*time.Second, logger)
}
