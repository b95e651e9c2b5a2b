package auth

import (
	"context"
	"errors"
	"testing"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
)

// named is an Authenticator that accepts and says who it is in
// Upstream.User.
type named string

func (n named) Authenticate(context.Context, proxy.AuthRequest) (proxy.AuthResult, error) {
	return proxy.AuthResult{OK: true, Upstream: upstream.Credentials{User: string(n)}}, nil
}

func TestMux(t *testing.T) {
	full := &Mux{OAuth: named("oauth"), Password: named("password")}
	for _, tc := range []struct {
		mux  *Mux
		mech string
		want string // Upstream.User; "" = accepted with the client's credentials
	}{
		{full, "LOGIN", "password"},
		{full, "PLAIN", "password"},
		{full, "XOAUTH2", "oauth"},
		{full, "oauthbearer", "oauth"},
		{&Mux{}, "LOGIN", ""},
		{&Mux{}, "XOAUTH2", ""},
		{&Mux{Password: named("password")}, "XOAUTH2", ""},
		{&Mux{OAuth: named("oauth")}, "PLAIN", ""},
	} {
		res, err := tc.mux.Authenticate(context.Background(), proxy.AuthRequest{Mechanism: tc.mech, User: "u@example.com", Secret: "x"})
		if err != nil || !res.OK || res.Upstream.User != tc.want {
			t.Errorf("%+v %s: %+v, %v; want OK from %q", tc.mux, tc.mech, res, err, tc.want)
		}
	}
}

type fakeStore struct {
	ok  bool
	err error
}

func (f fakeStore) Verify(context.Context, string, string) (bool, error) { return f.ok, f.err }

func TestPasswords(t *testing.T) {
	ctx := context.Background()
	req := proxy.AuthRequest{Mechanism: "LOGIN", User: "alice@example.com", Secret: "pw"}
	m := Master{User: "portico", Password: "masterpw"}

	res, err := (&Passwords{Store: fakeStore{ok: true}, Master: m}).Authenticate(ctx, req)
	want := upstream.Credentials{User: "portico", Secret: "masterpw", AuthzID: "alice@example.com"}
	if err != nil || !res.OK || res.Upstream != want || res.Backend != nil {
		t.Errorf("right password: %+v, %v", res, err)
	}
	res, err = (&Passwords{Store: fakeStore{ok: true}}).Authenticate(ctx, req)
	if err != nil || !res.OK || res.Upstream != (upstream.Credentials{}) {
		t.Errorf("without master: %+v, %v", res, err)
	}
	res, err = (&Passwords{Store: fakeStore{}, Master: m}).Authenticate(ctx, req)
	if err != nil || res.OK || res.Upstream != (upstream.Credentials{}) {
		t.Errorf("wrong password: %+v, %v", res, err)
	}
	down := errors.New("store down")
	if _, err = (&Passwords{Store: fakeStore{err: down}, Master: m}).Authenticate(ctx, req); !errors.Is(err, down) {
		t.Errorf("store down: %v", err)
	}
}
