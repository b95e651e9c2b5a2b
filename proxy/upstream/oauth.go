package upstream

import (
	"encoding/base64"
	"strings"

	"github.com/portico-mail/portico/routing"
)

// OAuth 2.0 pass-through: the client's bearer token is presented to the
// backend with the client's own mechanism (XOAUTH2 or OAUTHBEARER, RFC
// 7628), and the backend (Dovecot's oauth2 passdb) validates it.

// oauthMessage is the client response that carries token for user.
func oauthMessage(mech, user, token string) (string, bool) {
	switch mech {
	case "XOAUTH2":
		return "user=" + user + "\x01auth=Bearer " + token + "\x01\x01", true
	case "OAUTHBEARER":
		// GS2 header without channel binding, the user as authzid
		// (RFC 5801 saslname: "," and "=" escaped).
		name := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(user)
		return "n,a=" + name + ",\x01auth=Bearer " + token + "\x01\x01", true
	}
	return "", false
}

// oauthDummy answers a backend's error challenge (RFC 7628 §3.2.3): the
// client must reply before the server ends the exchange with a tagged NO.
// OAUTHBEARER's dummy is a single %x01; Google documents an empty response
// for XOAUTH2.
func oauthDummy(mech string) string {
	if mech == "OAUTHBEARER" {
		return "AQ=="
	}
	return ""
}

// oauthInitial checks that cred's token may be sent to this backend, which
// offers cred.Mechanism (as offerName says) or not, and returns the
// mechanism and the base64 initial response carrying the token.
func (c *conn) oauthInitial(cred Credentials, offered func(mech string) bool, offerName string) (mech, ir string, err error) {
	mech = strings.ToUpper(cred.Mechanism)
	msg, ok := oauthMessage(mech, cred.User, cred.Secret)
	if !ok {
		return "", "", c.errorf("login: mechanism %s not supported", c.clean(mech, 40))
	}
	if !offered(mech) {
		return "", "", c.errorf("login: backend does not offer %s%s (the token is not tried another way)", offerName, mech)
	}
	if c.b.TLS == routing.Plain && !cred.AllowCleartext {
		// A bearer token opens the account wherever the issuer's audience
		// reaches, for its whole lifetime: it crosses the network only
		// encrypted unless the operator says the path is private.
		return "", "", c.errorf("login: refusing to send an OAuth token to a backend without TLS")
	}
	if hasControl(cred.User) || hasControl(cred.Secret) {
		// A %x01 would end a key-value pair early and let the rest be
		// read as another one. The proxy has checked both already.
		return "", "", c.errorf("login: OAuth user or token contains control characters")
	}
	return mech, base64.StdEncoding.EncodeToString([]byte(msg)), nil
}

// authOAuth logs in with cred.Mechanism, which the backend must offer: a
// backend without it is refused, never sent the token another way.
func (c *conn) authOAuth(tag string, caps []string, cred Credentials, onUntagged func(response, []byte)) (response, error) {
	mech, ir, err := c.oauthInitial(cred, func(mech string) bool { return hasCap(caps, "AUTH="+mech) }, "AUTH=")
	if err != nil {
		return response{}, err
	}
	r, err := c.saslStart(tag, mech, ir, caps, onUntagged)
	if err != nil {
		return response{}, err
	}
	if r.kind != "+" {
		return r, nil
	}
	// The error challenge: base64 JSON saying why the token was refused.
	// It is not kept: the client gets the proxy's own (the backend's may
	// name internal scopes or URLs). The exchange must still end properly
	// for the backend's tagged NO to arrive.
	if err := c.write(oauthDummy(mech) + "\r\n"); err != nil {
		return response{}, c.errorf("authenticate: %w", err)
	}
	r, err = c.readTagged(tag, onUntagged)
	if err != nil {
		return response{}, c.errorf("authenticate: %w", err)
	}
	switch {
	case r.kind == "+":
		// A second challenge is a protocol error: cancel to stay in sync.
		if err := c.write("*\r\n"); err != nil {
			return response{}, c.errorf("authenticate: %w", err)
		}
		if _, err := c.readTagged(tag, nil); err != nil {
			return response{}, c.errorf("authenticate: %w", err)
		}
		return response{}, c.errorf("authenticate: unexpected second continuation")
	case r.kind == "OK":
		// Success after an error challenge would contradict RFC 7628.
		return response{}, c.errorf("authenticate: OK after an error challenge")
	}
	return r, nil
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
