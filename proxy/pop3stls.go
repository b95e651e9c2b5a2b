package proxy

// STLS (RFC 2595 §4) upgrades a cleartext POP3 connection exactly as
// STARTTLS does an IMAP one (starttls.go): what the client pipelined
// behind the command goes to the TLS handshake, never to the command
// loop, and the session starts over in the AUTHORIZATION state.
func (s *session) pop3STLS(arg string) action {
	if arg != "" {
		return s.badCommand("", "Unexpected arguments")
	}
	if !s.canStartTLS() {
		return s.badCommand("", "STLS not available")
	}
	s.userName = ""
	return s.startTLS("")
}
