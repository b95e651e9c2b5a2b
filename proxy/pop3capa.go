package proxy

import "github.com/emersion/go-imap/v2"

// CAPA (RFC 2449) lists what Portico offers before login: how to log in,
// and the capabilities of the transaction state that every POP3 backend
// Portico is made for (Dovecot) has, so that a client that asks only
// once, before login, as fetchmail does, still uses UIDL and TOP.
func (s *session) pop3Capa(arg string) action {
	if arg != "" {
		return s.badCommand("", "Unexpected arguments")
	}
	s.writeStatus("", imap.StatusResponseTypeOK, "", "Capability list follows")
	for _, c := range s.pop3Caps() {
		s.bw.WriteString(c + "\r\n")
	}
	s.bw.WriteString(".\r\n")
	return actContinue
}

func (s *session) pop3Caps() []string {
	caps := []string{"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"}
	if s.canStartTLS() {
		caps = append(caps, "STLS")
	}
	if s.canAuth() {
		// Before TLS, on a listener that requires it, neither is listed:
		// a client then knows to use STLS (RFC 2595 §4).
		caps = append(caps, "USER", "SASL "+s.pop3Mechanisms())
	}
	return append(caps, "IMPLEMENTATION Portico")
}

// pop3Mechanisms lists the SASL mechanisms of AUTH, space-separated.
func (s *session) pop3Mechanisms() string {
	if s.set.oauth.Enabled {
		return "PLAIN LOGIN XOAUTH2 OAUTHBEARER"
	}
	return "PLAIN LOGIN"
}
