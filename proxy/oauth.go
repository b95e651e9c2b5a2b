package proxy

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"

	"github.com/portico-mail/portico/proxy/wire"
)

// OAuth offers the OAuth 2.0 SASL mechanisms, AUTHENTICATE XOAUTH2 and
// OAUTHBEARER (RFC 7628). Its zero value offers neither.
//
// The Authenticator, if any, decides the token (Mechanism "XOAUTH2" or
// "OAUTHBEARER", Secret the token). Without one, or when it accepts
// without naming upstream credentials, the token passes through: the
// proxy logs in to the backend with the same mechanism and token, and the
// backend (Dovecot's oauth2 passdb) decides.
type OAuth struct {
	// Enabled advertises AUTH=XOAUTH2 and AUTH=OAUTHBEARER where the other
	// mechanisms are (after TLS).
	Enabled bool
	// Scope and OpenIDConfiguration, when set, go into the error
	// challenge of a refused token (RFC 7628 §3.2.2), telling the client
	// which token to ask its issuer for.
	Scope               string
	OpenIDConfiguration string
	// CleartextBackends lets pass-through tokens go to backends without
	// TLS. Off, such a login is refused (NO [UNAVAILABLE], logged).
	CleartextBackends bool
}

// The mechanisms of LoginEvent.Mechanism for OAuth.
const (
	MechXOAUTH2     = "xoauth2"     // AUTHENTICATE XOAUTH2
	MechOAUTHBEARER = "oauthbearer" // AUTHENTICATE OAUTHBEARER
)

// errorChallenge is the base64 error JSON sent before a refusal.
func (o OAuth) errorChallenge() string {
	e := struct {
		Status  string `json:"status"`
		Schemes string `json:"schemes"`
		Scope   string `json:"scope,omitempty"`
		OpenID  string `json:"openid-configuration,omitempty"`
	}{"invalid_token", "bearer", o.Scope, o.OpenIDConfiguration}
	b, _ := json.Marshal(e)
	return base64.StdEncoding.EncodeToString(b)
}

// authOAuth runs AUTHENTICATE XOAUTH2 or OAUTHBEARER after the initial
// response (nil: none, ask for the message with an empty challenge).
func (s *session) authOAuth(tag, mech string, ir []byte) action {
	resp := ir
	if resp == nil {
		// "=" is an empty response (RFC 4959), malformed below, not a
		// request for a challenge.
		var act action
		if resp, act = s.challenge(tag, ""); resp == nil {
			return act
		}
	}
	parse, method := parseXOAUTH2, MechXOAUTH2
	if mech == "OAUTHBEARER" {
		parse, method = parseOAUTHBEARER, MechOAUTHBEARER
	}
	user, token, err := parse(resp)
	clear(resp)
	if err != nil {
		s.observeLogin(&LoginEvent{Result: LoginAuthFailed, Mechanism: method})
		return s.authFailed(tag, time.Now(), "", "malformed "+mech+" message")
	}
	// From here every refusal ends with the error challenge (failLogin):
	// an expired token, an unknown user and a blocked client look alike.
	s.oauthChallenge = s.set.oauthChallenge
	defer func() { s.oauthChallenge = "" }()
	return s.login(tag, method, user, token)
}

// oauthRefusal sends the error challenge of a refused token and reads the
// client's dummy answer (RFC 7628 §3.2.3: %x01, which K-9 sends as an
// empty line; its content does not matter, the answer is NO anyway). It
// reports false when the session ends instead, act saying how.
func (s *session) oauthRefusal(tag string) (act action, ok bool) {
	s.bw.WriteString("+ " + s.oauthChallenge + "\r\n")
	if err := s.bw.Flush(); err != nil {
		s.outcome = "write failed"
		return actClose, false
	}
	if _, err := s.dec.ReadLine(s.set.limits.MaxAuthLine); err != nil {
		var werr *wire.Error
		if errors.As(err, &werr) && werr.Tag == "" {
			werr.Tag = tag
		}
		return s.readError(err), false
	}
	return actContinue, true
}
