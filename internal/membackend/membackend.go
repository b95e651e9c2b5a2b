// Package membackend runs in-memory IMAP servers (go-imap's imapmemserver),
// each with a small POP3 service for the same users and INBOX messages, as
// backends for `portico demo`, tests and benchmarks.
//
// Typical use:
//
//	b, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.test", Password: "pw", Messages: 3})
//	defer b.Close()
//	// route users to b.Addr() (and b.POP3Addr()) with routing.Plain
package membackend

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// User is a demo mailbox owner.
type User struct {
	Name, Password string
	// Messages is the number of sample messages put into INBOX.
	Messages int
	// MessageSize, when above the size of a sample message, pads each of
	// them to exactly this many bytes (SizedMessage); 0 keeps them small.
	MessageSize int
}

// Backend is one in-memory IMAP server listening on a loopback port, and
// a POP3 server on another (POP3Addr). Both speak cleartext and accept
// logins without TLS, as a backend on a trusted network does.
type Backend struct {
	ln  net.Listener
	srv *imapserver.Server
	mem *imapmemserver.Server

	mu       sync.Mutex
	users    map[string]*imapmemserver.User
	drops    map[string]*maildrop // the POP3 view of each user's INBOX
	popLn    net.Listener
	popConns map[net.Conn]struct{}
	popWG    sync.WaitGroup
	closed   bool
}

// Start listens on addr for IMAP, and on another port of the same host for
// POP3, and serves the given users.
func Start(addr string, users ...User) (*Backend, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("membackend: listen %s: %w", addr, err)
	}
	b := &Backend{ln: ln, mem: imapmemserver.New(),
		users: make(map[string]*imapmemserver.User), drops: make(map[string]*maildrop)}
	for _, u := range users {
		if err := b.AddUser(u); err != nil {
			ln.Close()
			return nil, err
		}
	}
	if err := b.startPOP3(ln.Addr()); err != nil {
		ln.Close()
		return nil, err
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
// sample messages in INBOX, seen over IMAP and POP3 alike.
func (b *Backend) AddUser(u User) error {
	mu := imapmemserver.NewUser(u.Name, u.Password)
	for _, mbox := range []string{"INBOX", "Sent", "Archive"} {
		if err := mu.Create(mbox, nil); err != nil {
			return fmt.Errorf("membackend: create %s for %s: %w", mbox, u.Name, err)
		}
	}
	drop := &maildrop{password: u.Password, imap: mu}
	for i := 1; i <= u.Messages; i++ {
		msg := SizedMessage(u.Name, i, u.MessageSize)
		if err := b.append(mu, drop, "INBOX", msg); err != nil {
			return err
		}
	}
	b.mem.AddUser(mu)
	b.mu.Lock()
	b.users[u.Name] = mu
	b.drops[u.Name] = drop
	b.mu.Unlock()
	return nil
}

// Append adds a raw RFC 5322 message to a user's mailbox; one added to
// INBOX is seen over POP3 too.
func (b *Backend) Append(user, mailbox string, msg []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock() // keeps the POP3 order the IMAP order
	mu := b.users[user]
	if mu == nil {
		return fmt.Errorf("membackend: no user %q", user)
	}
	return b.append(mu, b.drops[user], mailbox, msg)
}

func (b *Backend) append(mu *imapmemserver.User, drop *maildrop, mailbox string, msg []byte) error {
	r := literal{Reader: bytes.NewReader(msg), size: int64(len(msg))}
	data, err := mu.Append(mailbox, r, &imap.AppendOptions{Time: time.Now()})
	if err != nil {
		return fmt.Errorf("membackend: append to %s: %w", mailbox, err)
	}
	if mailbox == "INBOX" {
		drop.msgs = append(drop.msgs, &popMessage{uid: data.UID, data: bytes.Clone(msg)})
	}
	return nil
}

// Close stops listening and ends all sessions, IMAP and POP3; the POP3
// sessions' goroutines have ended when it returns.
func (b *Backend) Close() error {
	err := b.srv.Close()
	return errors.Join(err, b.closePOP3())
}

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

// SizedMessage is SampleMessage padded with body lines to exactly size
// bytes; a size below the sample's own gives the sample unchanged. The
// padding lines are at most 78 characters and CRLF, and every tenth
// starts with ".", for the dot-stuffing of POP3 and of SMTP.
func SizedMessage(user string, i, size int) []byte {
	msg := SampleMessage(user, i)
	if size <= len(msg) {
		return msg
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	buf.Write(msg)
	if size-len(msg) == 1 { // no room for a line: widen the last one
		buf.Truncate(len(msg) - 2)
		buf.WriteString(" \r\n")
	}
	const filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor"
	for n := 0; buf.Len() < size; n++ {
		left := size - buf.Len()
		l := min(left, 80) // with CRLF
		if left-l == 1 {
			l--
		}
		line := fmt.Sprintf("%06d %s", n, filler)
		if n%10 == 9 {
			line = "." + line
		}
		buf.WriteString(line[:l-2])
		buf.WriteString("\r\n")
	}
	return buf.Bytes()
}
