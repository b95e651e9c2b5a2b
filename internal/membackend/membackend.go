// Package membackend runs in-memory IMAP servers (go-imap's imapmemserver)
// as backends for `portico demo`, tests and benchmarks.
//
// Typical use:
//
//	b, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.test", Password: "pw", Messages: 3})
//	defer b.Close()
//	// route users to b.Addr() with routing.Plain
package membackend

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// User is a demo mailbox owner.
type User struct {
	Name, Password string
	// Messages is the number of small sample messages put into INBOX.
	Messages int
}

// Backend is one in-memory IMAP server listening on a loopback port. It
// speaks cleartext and accepts logins without TLS, as a backend on a
// trusted network does.
type Backend struct {
	ln    net.Listener
	srv   *imapserver.Server
	mem   *imapmemserver.Server
	users map[string]*imapmemserver.User
}

// Start listens on addr and serves the given users.
func Start(addr string, users ...User) (*Backend, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("membackend: listen %s: %w", addr, err)
	}
	b := &Backend{ln: ln, mem: imapmemserver.New(), users: make(map[string]*imapmemserver.User)}
	for _, u := range users {
		if err := b.AddUser(u); err != nil {
			ln.Close()
			return nil, err
		}
	}
	b.srv = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return b.mem.NewSession(), nil, nil
		},
		Caps: imap.CapSet{
			imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}, imap.CapSASLIR: {},
			imap.CapLiteralPlus: {}, imap.CapIdle: {}, imap.CapMove: {}, imap.CapUIDPlus: {},
			imap.CapNamespace: {}, imap.CapUnselect: {},
		},
		InsecureAuth: true,
		Logger:       log.New(io.Discard, "", 0),
	})
	go b.srv.Serve(ln)
	return b, nil
}

// Addr is the host:port the backend listens on.
func (b *Backend) Addr() string { return b.ln.Addr().String() }

// AddUser creates a user with INBOX, Sent and Archive and u.Messages
// sample messages in INBOX.
func (b *Backend) AddUser(u User) error {
	mu := imapmemserver.NewUser(u.Name, u.Password)
	for _, mbox := range []string{"INBOX", "Sent", "Archive"} {
		if err := mu.Create(mbox, nil); err != nil {
			return fmt.Errorf("membackend: create %s for %s: %w", mbox, u.Name, err)
		}
	}
	for i := 1; i <= u.Messages; i++ {
		msg := SampleMessage(u.Name, i)
		if err := b.append(mu, "INBOX", msg); err != nil {
			return err
		}
	}
	b.mem.AddUser(mu)
	b.users[u.Name] = mu
	return nil
}

// Append adds a raw RFC 5322 message to a user's mailbox.
func (b *Backend) Append(user, mailbox string, msg []byte) error {
	mu := b.users[user]
	if mu == nil {
		return fmt.Errorf("membackend: no user %q", user)
	}
	return b.append(mu, mailbox, msg)
}

func (b *Backend) append(mu *imapmemserver.User, mailbox string, msg []byte) error {
	r := literal{Reader: bytes.NewReader(msg), size: int64(len(msg))}
	if _, err := mu.Append(mailbox, r, &imap.AppendOptions{Time: time.Now()}); err != nil {
		return fmt.Errorf("membackend: append to %s: %w", mailbox, err)
	}
	return nil
}

// Close stops listening and ends all sessions.
func (b *Backend) Close() error { return b.srv.Close() }

type literal struct {
	io.Reader
	size int64
}

func (l literal) Size() int64 { return l.size }

// SampleMessage returns the i-th demo message for user.
func SampleMessage(user string, i int) []byte {
	return []byte(fmt.Sprintf("From: Portico Demo <demo@example.test>\r\n"+
		"To: <%s>\r\n"+
		"Subject: Demo message %d\r\n"+
		"Date: Mon, 02 Nov 2026 10:%02d:00 +0000\r\n"+
		"Message-ID: <demo-%d@example.test>\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\n"+
		"\r\n"+
		"Hello %s,\r\n\r\nthis is demo message %d, served through Portico.\r\n", user, i, i%60, i, user, i))
}
