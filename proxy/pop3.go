package proxy

import (
	"bufio"
	"strings"

	"github.com/emersion/go-imap/v2"
)

// POP3 before login (RFC 1939, with CAPA and response codes from RFC 2449,
// STLS from RFC 2595, AUTH from RFC 5034, the codes of RFC 3206). A POP3
// session is a session like an IMAP one: the same admission, TLS,
// limits, login path, upstream dialing and splice; only the commands it
// reads before login and the way it words its answers differ. The login
// path answers through writeStatus, which words a status for POP3 here,
// so that a wrong password, a limit or an unavailable backend has one
// decision and two spellings.
//
// One file per command, as for IMAP: pop3capa.go, pop3stls.go,
// pop3user.go (USER and PASS), pop3auth.go. QUIT is below.

// pop3LoginDelay is RFC 2449's LOGIN-DELAY, which IMAP has not: a POP3
// backend's answer passed on.
const pop3LoginDelay imap.ResponseCode = "LOGIN-DELAY"

// nextPOP3 reads and runs one POP3 command.
func (s *session) nextPOP3() action {
	// RFC 2449 limits a command to 255 octets, but an AUTH line carries
	// its initial response, which for a token is much longer: AUTH's
	// bound applies to every line.
	line, err := s.dec.ReadLine(s.set.limits.MaxAuthLine)
	if err != nil {
		return s.readError(err)
	}
	verb, arg, _ := strings.Cut(string(line), " ")
	clear(line) // it may hold a password (PASS)
	switch strings.ToUpper(verb) {
	case "CAPA":
		return s.pop3Capa(arg)
	case "STLS":
		return s.pop3STLS(arg)
	case "USER":
		return s.pop3User(arg)
	case "PASS":
		return s.pop3Pass(arg)
	case "AUTH":
		return s.pop3Auth(arg)
	case "QUIT":
		s.writeStatus("", imap.StatusResponseTypeOK, "", "Logging out.")
		s.outcome = "logout before login"
		return actClose
	case "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "LAST", "APOP":
		return s.badCommand("", "Log in first")
	}
	return s.badCommand("", "Unknown command")
}

// writePOP3Status words an IMAP status as POP3 does: OK is +OK, anything
// else -ERR, with the response code that means the same (RFC 3206): AUTH
// for credentials refused (a client must not retry them as they are),
// SYS/TEMP for a failure worth retrying later, IN-USE for a mailbox busy
// elsewhere. Other codes are left out.
func writePOP3Status(w *bufio.Writer, typ imap.StatusResponseType, code imap.ResponseCode, text string) {
	if typ == imap.StatusResponseTypeOK {
		w.WriteString("+OK ")
	} else {
		w.WriteString("-ERR ")
	}
	if c := pop3Code(code); c != "" {
		w.WriteString("[" + c + "] ")
	}
	w.WriteString(text)
	w.WriteString("\r\n")
}

func pop3Code(code imap.ResponseCode) string {
	switch code {
	case imap.ResponseCodeAuthenticationFailed, imap.ResponseCodeAuthorizationFailed, imap.ResponseCodePrivacyRequired:
		return "AUTH"
	case imap.ResponseCodeUnavailable, imap.ResponseCodeLimit:
		return "SYS/TEMP"
	case imap.ResponseCodeInUse:
		return "IN-USE"
	case pop3LoginDelay:
		return string(code)
	}
	return ""
}
