package proxy

import (
	"strings"

	"github.com/emersion/go-imap/v2"
)

// AUTH (RFC 5034): the SASL exchange of IMAP's AUTHENTICATE (sasl in
// authenticate.go), with the initial response on the command line, "="
// for an empty one. AUTH alone lists the mechanisms, as the older
// clients that ask that way expect (Dovecot and Outlook do the same).
func (s *session) pop3Auth(arg string) action {
	if arg == "" {
		if !s.canAuth() {
			return s.privacyRequired("", MechPlain)
		}
		s.writeStatus("", imap.StatusResponseTypeOK, "", "Mechanisms follow")
		for _, m := range strings.Fields(s.pop3Mechanisms()) {
			s.bw.WriteString(m + "\r\n")
		}
		s.bw.WriteString(".\r\n")
		return actContinue
	}
	mech, irArg, hasIR := strings.Cut(arg, " ")
	var ir []byte
	if hasIR {
		var err error
		if ir, err = decodeSASL(irArg); err != nil || strings.IndexByte(irArg, ' ') >= 0 {
			return s.badCommand("", "Invalid base64 in initial response")
		}
	}
	return s.sasl("", mech, ir)
}
