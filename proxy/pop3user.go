package proxy

import (
	"strings"

	"github.com/emersion/go-imap/v2"
)

// USER and PASS (RFC 1939 §7): the name first, then the password, which
// is the rest of the PASS line, spaces included. Before TLS, on a listener
// that requires it, USER is refused already, so no password follows it
// in clear; nothing is asked of Redis or a backend for the name alone.
func (s *session) pop3User(arg string) action {
	if !s.canAuth() {
		return s.privacyRequired("", MechUserPass)
	}
	if arg == "" || strings.TrimSpace(arg) != arg {
		return s.badCommand("", "USER takes a user name")
	}
	s.userName = arg
	s.writeStatus("", imap.StatusResponseTypeOK, "", "Send PASS.")
	return actContinue
}

func (s *session) pop3Pass(arg string) action {
	user := s.userName
	s.userName = "" // a failed PASS goes back to USER (RFC 1939 §7)
	if !s.canAuth() {
		return s.privacyRequired("", MechUserPass)
	}
	if user == "" {
		return s.badCommand("", "Send USER first")
	}
	return s.login("", MechUserPass, user, arg)
}
