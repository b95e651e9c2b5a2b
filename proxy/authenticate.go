package proxy

import (
	"encoding/base64"
	"errors"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"

	"github.com/portico-mail/portico/proxy/wire"
)

// errCancelled is the client's "*" answer to a challenge.
var errCancelled = errors.New("authentication cancelled")

// AUTHENTICATE PLAIN (RFC 4616, with or without SASL-IR), the legacy
// LOGIN mechanism, for which go-sasl no longer has a server, and with
// Server.OAuth XOAUTH2 and OAUTHBEARER (oauth.go).
func (s *session) handleAuthenticate(cmd *wire.Command) action {
	if len(cmd.Args) < 1 || len(cmd.Args) > 2 || cmd.Args[0].Kind != wire.KindAtom {
		return s.badCommand(cmd.Tag, "AUTHENTICATE takes a mechanism and an optional initial response")
	}
	var ir []byte
	if len(cmd.Args) == 2 {
		if cmd.Args[1].Kind != wire.KindAtom {
			return s.badCommand(cmd.Tag, "Invalid initial response")
		}
		var err error
		if ir, err = decodeSASL(cmd.Args[1].Value); err != nil {
			return s.badCommand(cmd.Tag, "Invalid base64 in initial response")
		}
	}
	return s.sasl(cmd.Tag, cmd.Args[0].Value, ir)
}

// sasl runs the exchange of mechanism mech, ir being the initial response
// (nil when absent): IMAP's AUTHENTICATE and POP3's AUTH (RFC 5034) are
// the same exchange but for the tag, which POP3 has not.
func (s *session) sasl(tag, mech string, ir []byte) action {
	mech = strings.ToUpper(mech)
	var m string
	switch mech {
	case "PLAIN":
		m = MechPlain
	case "LOGIN":
		m = MechSASLLogin
	case "XOAUTH2", "OAUTHBEARER":
		if s.set.oauth.Enabled {
			m = strings.ToLower(mech)
		}
	}
	if m == "" {
		s.writeStatus(tag, imap.StatusResponseTypeNo, "", "Unsupported authentication mechanism")
		return actContinue
	}
	if !s.canAuth() {
		return s.privacyRequired(tag, m)
	}
	switch m {
	case MechPlain:
		return s.authPlain(tag, ir)
	case MechSASLLogin:
		return s.authLogin(tag, ir)
	}
	return s.authOAuth(tag, mech, ir)
}

func (s *session) authPlain(tag string, ir []byte) action {
	resp := ir
	if resp == nil {
		var act action
		if resp, act = s.challenge(tag, ""); resp == nil {
			return act
		}
	}
	var user, pass, authz string
	srv := sasl.NewPlainServer(func(identity, username, password string) error {
		authz, user, pass = identity, username, password
		return nil
	})
	if _, _, err := srv.Next(resp); err != nil {
		s.observeLogin(&LoginEvent{Result: LoginAuthFailed, Mechanism: MechPlain})
		return s.authFailed(tag, time.Now(), "", "malformed PLAIN response")
	}
	if authz != "" && authz != user {
		// Logging in as someone else is a master-user feature, not offered.
		s.writeStatus(tag, imap.StatusResponseTypeNo, imap.ResponseCodeAuthorizationFailed, "Authorization identity not allowed")
		s.authFails++
		return s.afterAuthFailure()
	}
	return s.login(tag, MechPlain, user, pass)
}

var (
	promptUser = base64.StdEncoding.EncodeToString([]byte("Username:"))
	promptPass = base64.StdEncoding.EncodeToString([]byte("Password:"))
)

func (s *session) authLogin(tag string, ir []byte) action {
	user := ir
	if user == nil {
		var act action
		if user, act = s.challenge(tag, promptUser); user == nil {
			return act
		}
	}
	pass, act := s.challenge(tag, promptPass)
	if pass == nil {
		return act
	}
	return s.login(tag, MechSASLLogin, string(user), string(pass))
}

// challenge sends one continuation and reads the client's answer. A nil
// answer means the exchange is over and act says what to do next: the
// client cancelled with "*", sent bad base64, or went away.
func (s *session) challenge(tag, b64 string) ([]byte, action) {
	s.bw.WriteString("+ " + b64 + "\r\n")
	if err := s.bw.Flush(); err != nil {
		s.outcome = "write failed"
		return nil, actClose
	}
	line, err := s.dec.ReadLine(s.set.limits.MaxAuthLine)
	if err != nil {
		var werr *wire.Error
		if errors.As(err, &werr) && werr.Tag == "" {
			werr.Tag = tag // AUTHENTICATE ends with a tagged answer (RFC 3501 §6.2.2)
		}
		return nil, s.readError(err)
	}
	if string(line) == "*" {
		s.writeStatus(tag, imap.StatusResponseTypeBad, "", "Authentication cancelled")
		return nil, actContinue
	}
	resp, err := decodeSASL(string(line))
	if err != nil {
		return nil, s.badCommand(tag, "Invalid base64 in response")
	}
	return resp, actContinue
}

// decodeSASL decodes a base64 SASL response; "=" is the empty response
// (RFC 4959). The result is never nil on success, so that "empty" and
// "absent" stay apart.
func decodeSASL(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err != nil {
		return nil, err
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}
