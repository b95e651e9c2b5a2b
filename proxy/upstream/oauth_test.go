package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/portico-mail/portico/routing"
)

const testToken = "ya29.a0-tok_en~x/y+z=="

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// serveOAuth is a backend offering XOAUTH2 and OAUTHBEARER that accepts
// testToken; caps are its greeting's. It refuses others with the RFC 7628
// error challenge and records the client's dummy answer.
func serveOAuth(caps string, dummy *string) func(f *fake) {
	return func(f *fake) {
		f.send("* OK [CAPABILITY " + caps + "] ready\r\n")
		l := f.line()
		tag, cmd, _ := strings.Cut(l, " ")
		args := strings.Fields(cmd)
		if len(args) < 2 || args[0] != "AUTHENTICATE" {
			f.send(tag + " BAD what\r\n")
			return
		}
		var resp string
		if len(args) == 3 {
			resp = args[2]
		} else {
			f.send("+ \r\n")
			resp = f.line()
		}
		msg, _ := base64.StdEncoding.DecodeString(resp)
		if strings.Contains(string(msg), "auth=Bearer "+testToken+"\x01") {
			f.send(tag + " OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
			return
		}
		f.send("+ " + b64(`{"status":"invalid_token","schemes":"bearer","scope":"internal"}`) + "\r\n")
		*dummy = f.line()
		f.send(tag + " NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
	}
}

func TestOAuthPassThrough(t *testing.T) {
	for _, tc := range []struct {
		mech, caps, want string
	}{
		{"XOAUTH2", "IMAP4rev1 SASL-IR AUTH=XOAUTH2", "A AUTHENTICATE XOAUTH2 " + b64("user=alice@example.test\x01auth=Bearer "+testToken+"\x01\x01")},
		{"OAUTHBEARER", "IMAP4rev1 SASL-IR AUTH=OAUTHBEARER", "A AUTHENTICATE OAUTHBEARER " + b64("n,a=alice@example.test,\x01auth=Bearer "+testToken+"\x01\x01")},
		// Without SASL-IR: the message follows the empty challenge.
		{"XOAUTH2", "IMAP4rev1 AUTH=XOAUTH2", "A AUTHENTICATE XOAUTH2\r\n" + b64("user=alice@example.test\x01auth=Bearer "+testToken+"\x01\x01")},
		{"OAUTHBEARER", "IMAP4rev1 AUTH=OAUTHBEARER", "A AUTHENTICATE OAUTHBEARER\r\n" + b64("n,a=alice@example.test,\x01auth=Bearer "+testToken+"\x01\x01")},
	} {
		var dummy string
		addr, done := startFake(t, serveOAuth(tc.caps, &dummy))
		cred := Credentials{User: "alice@example.test", Secret: testToken, Mechanism: tc.mech, AllowCleartext: true}
		res, err := Login(context.Background(), &routing.Backend{Addr: addr}, cred, nil)
		if err != nil {
			t.Fatalf("%s (%s): %v", tc.mech, tc.caps, err)
		}
		res.Conn.Close()
		want := strings.ReplaceAll(tc.want, "A ", "p1 ") + "\r\n"
		if rx := wait(t, done).received(); rx != want {
			t.Errorf("%s (%s): backend received %q, want %q", tc.mech, tc.caps, rx, want)
		}
		if !hasCap(res.Caps, "IDLE") {
			t.Errorf("caps %v", res.Caps)
		}
	}
}

func TestOAuthPassThroughRefused(t *testing.T) {
	for mech, wantDummy := range map[string]string{"XOAUTH2": "", "OAUTHBEARER": "AQ=="} {
		dummy := "unset"
		addr, done := startFake(t, serveOAuth("IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=OAUTHBEARER", &dummy))
		cred := Credentials{User: "alice@example.test", Secret: "expired-token", Mechanism: mech, AllowCleartext: true}
		_, err := Login(context.Background(), &routing.Backend{Addr: addr}, cred, nil)
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("%s: %v, want ErrAuthFailed", mech, err)
		}
		wait(t, done)
		if dummy != wantDummy {
			t.Errorf("%s: dummy response %q, want %q", mech, dummy, wantDummy)
		}
		if strings.Contains(err.Error(), "expired-token") {
			t.Errorf("error names the token: %v", err)
		}
	}
}

// A backend that does not offer the client's mechanism, or that would get
// the token in clear, is refused without being sent it.
func TestOAuthPassThroughNotSent(t *testing.T) {
	for name, tc := range map[string]struct {
		caps      string
		cleartext bool
	}{
		"no AUTH=XOAUTH2":   {"IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=OAUTHBEARER", true},
		"cleartext backend": {"IMAP4rev1 SASL-IR AUTH=XOAUTH2", false},
	} {
		addr, done := startFake(t, func(f *fake) {
			f.send("* OK [CAPABILITY " + tc.caps + "] ready\r\n")
			f.line()
		})
		cred := Credentials{User: "alice@example.test", Secret: testToken, Mechanism: "XOAUTH2", AllowCleartext: tc.cleartext}
		_, err := Login(context.Background(), &routing.Backend{Addr: addr}, cred, nil)
		if err == nil || errors.Is(err, ErrAuthFailed) {
			t.Fatalf("%s: %v, want a refusal that is not a failed login", name, err)
		}
		if rx := wait(t, done).received(); rx != "" {
			t.Errorf("%s: backend received %q", name, rx)
		}
	}
}

func TestOAuthControlCharacters(t *testing.T) {
	addr, done := startFake(t, func(f *fake) {
		f.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n")
		f.line()
	})
	cred := Credentials{User: "alice@example.test\x01auth=Bearer x", Secret: testToken, Mechanism: "XOAUTH2", AllowCleartext: true}
	if _, err := Login(context.Background(), &routing.Backend{Addr: addr}, cred, nil); err == nil {
		t.Fatal("a user with a 0x01 byte was sent")
	}
	if rx := wait(t, done).received(); rx != "" {
		t.Errorf("backend received %q", rx)
	}
}
