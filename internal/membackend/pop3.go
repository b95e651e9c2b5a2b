package membackend

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// The POP3 side (RFC 1939, CAPA of RFC 2449, AUTH PLAIN of RFC 5034, and
// XCLIENT, accepted and ignored, as Portico forwards the client address
// with it to trusted backends).
//
// A user's POP3 maildrop is their INBOX as membackend filled it: the
// messages AddUser seeded and those Append put into INBOX, in that order,
// kept as raw bytes beside the IMAP store (imapmemserver gives no way to
// read a message back but an IMAP connection). A session sees the maildrop
// as it was at login. Messages deleted over POP3 (DELE, then QUIT) leave
// the maildrop and are expunged from the IMAP INBOX too; what IMAP clients
// change (APPEND, EXPUNGE) is not seen over POP3.

const (
	// maxPOP3Line bounds a command line; RFC 2449 allows 255 octets, and
	// an AUTH PLAIN response line a little more.
	maxPOP3Line = 4096
	// pop3Idle is the autologout timer of RFC 1939 (at least 10 minutes).
	pop3Idle = 10 * time.Minute
)

// maildrop is one user's POP3 view of their INBOX; msgs is guarded by
// Backend.mu.
type maildrop struct {
	password string
	imap     *imapmemserver.User
	msgs     []*popMessage
}

type popMessage struct {
	uid  imap.UID // in the IMAP INBOX
	data []byte
}

// POP3Addr is the host:port of the backend's POP3 service: cleartext, like
// Addr, on the same host.
func (b *Backend) POP3Addr() string { return b.popLn.Addr().String() }

// startPOP3 listens beside the IMAP listener, on the same host.
func (b *Backend) startPOP3(imapAddr net.Addr) error {
	host := "127.0.0.1"
	if a, ok := imapAddr.(*net.TCPAddr); ok {
		host = a.IP.String()
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return fmt.Errorf("membackend: listen for POP3: %w", err)
	}
	b.popLn = ln
	b.popConns = make(map[net.Conn]struct{})
	b.popWG.Add(1)
	go b.acceptPOP3()
	return nil
}

func (b *Backend) acceptPOP3() {
	defer b.popWG.Done()
	for {
		c, err := b.popLn.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			b.mu.Lock()
			closed := b.closed
			b.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like
			continue
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.popConns[c] = struct{}{}
		b.popWG.Add(1)
		b.mu.Unlock()
		go b.servePOP3(c)
	}
}

// closePOP3 stops the listener, ends every session and waits for their
// goroutines.
func (b *Backend) closePOP3() error {
	b.mu.Lock()
	b.closed = true
	err := b.popLn.Close()
	for c := range b.popConns {
		c.Close()
	}
	b.mu.Unlock()
	b.popWG.Wait()
	return err
}

// pop3Session is one POP3 connection.
type pop3Session struct {
	b    *Backend
	c    net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	user string // from USER, waiting for PASS

	// TRANSACTION state: the maildrop and its messages at login.
	drop    *maildrop
	msgs    []*popMessage
	deleted []bool
}

func (b *Backend) servePOP3(c net.Conn) {
	defer b.popWG.Done()
	defer func() {
		b.mu.Lock()
		delete(b.popConns, c)
		b.mu.Unlock()
		c.Close()
	}()
	s := &pop3Session{b: b, c: c, r: bufio.NewReaderSize(c, maxPOP3Line), w: bufio.NewWriter(c)}
	s.ok("Portico membackend POP3 ready.")
	for {
		if s.r.Buffered() == 0 { // answers to pipelined commands go out together
			if s.w.Flush() != nil {
				return
			}
		}
		line, err := s.readLine()
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				s.err("Line too long.")
				s.w.Flush()
				lingeringClose(c)
			}
			return
		}
		if !s.command(line) {
			s.w.Flush()
			return
		}
	}
}

// lingeringClose sends FIN and reads what the client still sends, for a
// while, so that closing with unread input does not reset the connection
// and lose the last answer.
func lingeringClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 1<<20))
}

func (s *pop3Session) readLine() (string, error) {
	s.c.SetReadDeadline(time.Now().Add(pop3Idle))
	l, err := s.r.ReadSlice('\n')
	if err != nil {
		return "", err
	}
	l = bytes.TrimSuffix(bytes.TrimSuffix(l, []byte("\n")), []byte("\r"))
	return string(l), nil
}

func (s *pop3Session) ok(format string, args ...any) {
	s.w.WriteString("+OK")
	if format != "" {
		s.w.WriteString(" ")
		fmt.Fprintf(s.w, format, args...)
	}
	s.w.WriteString("\r\n")
}

func (s *pop3Session) err(format string, args ...any) {
	s.w.WriteString("-ERR ")
	fmt.Fprintf(s.w, format, args...)
	s.w.WriteString("\r\n")
}

// command runs one command line; false ends the session.
func (s *pop3Session) command(line string) bool {
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	switch verb {
	case "QUIT":
		if s.drop != nil {
			s.update()
		}
		s.ok("Logging out.")
		return false
	case "NOOP":
		s.ok("")
		return true
	case "CAPA":
		s.capa()
		return true
	}
	if s.drop == nil {
		s.authorization(verb, arg)
	} else {
		s.transaction(verb, arg)
	}
	return true
}

func (s *pop3Session) capa() {
	s.ok("Capability list follows")
	if s.drop == nil {
		s.w.WriteString("USER\r\nSASL PLAIN\r\n")
	}
	s.w.WriteString("UIDL\r\nTOP\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n")
	if s.drop == nil {
		s.w.WriteString("XCLIENT\r\n")
	}
	s.w.WriteString(".\r\n")
}

func (s *pop3Session) authorization(verb, arg string) {
	switch verb {
	case "USER":
		if arg == "" {
			s.err("USER needs a name.")
			return
		}
		s.user = arg
		s.ok("")
	case "PASS":
		user := s.user
		s.user = ""
		if user == "" {
			s.err("USER first.")
			return
		}
		s.login(user, arg)
	case "AUTH":
		s.auth(arg)
	case "XCLIENT":
		// Accepted and ignored: the client's address is of no use here.
		s.ok("")
	default:
		s.err("Unknown command in AUTHORIZATION state.")
	}
}

func (s *pop3Session) auth(arg string) {
	mech, ir, hasIR := strings.Cut(arg, " ")
	switch {
	case mech == "":
		// The mechanism list of RFC 1734's AUTH without argument.
		s.ok("")
		s.w.WriteString("PLAIN\r\n.\r\n")
		return
	case !strings.EqualFold(mech, "PLAIN"):
		s.err("Unsupported authentication mechanism.")
		return
	}
	if !hasIR {
		s.w.WriteString("+ \r\n")
		s.w.Flush()
		l, err := s.readLine()
		if err != nil {
			return // the session ends on the next read
		}
		if l == "*" {
			s.err("Authentication cancelled.")
			return
		}
		ir = l
	} else if ir == "=" {
		ir = ""
	}
	dec, err := base64.StdEncoding.DecodeString(ir)
	if err != nil {
		s.err("Invalid base64.")
		return
	}
	parts := strings.Split(string(dec), "\x00")
	if len(parts) != 3 || (parts[0] != "" && parts[0] != parts[1]) {
		s.err("[AUTH] Authentication failed.")
		return
	}
	s.login(parts[1], parts[2])
}

func (s *pop3Session) login(user, pass string) {
	s.b.mu.Lock()
	drop := s.b.drops[user]
	var msgs []*popMessage
	if drop != nil {
		msgs = append(msgs, drop.msgs...)
	}
	s.b.mu.Unlock()
	if drop == nil || subtle.ConstantTimeCompare([]byte(pass), []byte(drop.password)) != 1 {
		s.err("[AUTH] Authentication failed.")
		return
	}
	s.drop, s.msgs, s.deleted = drop, msgs, make([]bool, len(msgs))
	s.ok("Logged in.")
}

func (s *pop3Session) transaction(verb, arg string) {
	switch verb {
	case "STAT":
		n, size := s.stat()
		s.ok("%d %d", n, size)
	case "LIST", "UIDL":
		if arg != "" {
			i, ok := s.message(arg)
			if !ok {
				return
			}
			s.ok("%d %s", i+1, s.listValue(verb, i))
			return
		}
		s.ok("")
		for i := range s.msgs {
			if !s.deleted[i] {
				fmt.Fprintf(s.w, "%d %s\r\n", i+1, s.listValue(verb, i))
			}
		}
		s.w.WriteString(".\r\n")
	case "RETR":
		i, ok := s.message(arg)
		if !ok {
			return
		}
		s.ok("%d octets", len(s.msgs[i].data))
		writeDotStuffed(s.w, s.msgs[i].data)
	case "TOP":
		n, lines, _ := strings.Cut(arg, " ")
		i, ok := s.message(n)
		if !ok {
			return
		}
		m, err := strconv.Atoi(lines)
		if err != nil || m < 0 {
			s.err("TOP needs a message number and a line count.")
			return
		}
		s.ok("")
		writeDotStuffed(s.w, top(s.msgs[i].data, m))
	case "DELE":
		i, ok := s.message(arg)
		if !ok {
			return
		}
		s.deleted[i] = true
		s.ok("Message %d deleted.", i+1)
	case "RSET":
		clear(s.deleted)
		n, size := s.stat()
		s.ok("%d messages (%d octets)", n, size)
	default:
		s.err("Unknown command in TRANSACTION state.")
	}
}

func (s *pop3Session) stat() (n, size int) {
	for i, m := range s.msgs {
		if !s.deleted[i] {
			n++
			size += len(m.data)
		}
	}
	return n, size
}

func (s *pop3Session) listValue(verb string, i int) string {
	if verb == "UIDL" {
		return strconv.FormatUint(uint64(s.msgs[i].uid), 10)
	}
	return strconv.Itoa(len(s.msgs[i].data))
}

// message parses a message number and answers -ERR when there is no such
// message, or it is deleted.
func (s *pop3Session) message(arg string) (int, bool) {
	n, err := strconv.Atoi(arg)
	if err != nil || n < 1 || n > len(s.msgs) || arg[0] == '+' {
		s.err("No such message.")
		return 0, false
	}
	if s.deleted[n-1] {
		s.err("Message %d is deleted.", n)
		return 0, false
	}
	return n - 1, true
}

// update is the UPDATE state: the messages marked for deletion leave the
// maildrop, and the IMAP INBOX.
func (s *pop3Session) update() {
	gone := make(map[*popMessage]bool)
	var uids imap.UIDSet
	for i, m := range s.msgs {
		if s.deleted[i] {
			gone[m] = true
			uids.AddNum(m.uid)
		}
	}
	if len(gone) == 0 {
		return
	}
	s.b.mu.Lock()
	// In place: sessions hold copies, made at their login.
	s.drop.msgs = slices.DeleteFunc(s.drop.msgs, func(m *popMessage) bool { return gone[m] })
	s.b.mu.Unlock()

	sess := imapmemserver.NewUserSession(s.drop.imap)
	defer sess.Close()
	if _, err := sess.Select("INBOX", nil); err != nil {
		return
	}
	// Silent: no FETCH responses, so writers without a connection do.
	sess.Store(&imapserver.FetchWriter{}, uids, &imap.StoreFlags{
		Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted},
	}, nil)
	sess.Expunge(&imapserver.ExpungeWriter{}, &uids)
}

// writeDotStuffed writes data as a POP3 multi-line response body: a "." is
// put before every line that starts with one, and the response ends with
// CRLF "." CRLF (after a CRLF added where data lacks a final line end).
func writeDotStuffed(w *bufio.Writer, data []byte) {
	lineStart := true
	for len(data) > 0 {
		if lineStart && data[0] == '.' {
			w.WriteByte('.')
		}
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			w.Write(data)
			lineStart = false
			break
		}
		w.Write(data[:i+1])
		data = data[i+1:]
		lineStart = true
	}
	if !lineStart {
		w.WriteString("\r\n")
	}
	w.WriteString(".\r\n")
}

// top returns the header of msg, the blank line after it and the first n
// lines of its body.
func top(msg []byte, n int) []byte {
	end, inBody := 0, false
	for end < len(msg) {
		if inBody {
			if n == 0 {
				break
			}
			n--
		}
		i := bytes.IndexByte(msg[end:], '\n')
		if i < 0 {
			end = len(msg)
			break
		}
		line := msg[end : end+i+1]
		end += i + 1
		if !inBody && (string(line) == "\r\n" || string(line) == "\n") {
			inBody = true
		}
	}
	return msg[:end]
}
