package proxy

import (
	"strings"
	"testing"
)

// FuzzOAuthMessage: the XOAUTH2 and OAUTHBEARER parsers never panic, and
// what they accept is a printable user and an RFC 6750 token that, sent
// again in a message of the other kind, parse back the same.
func FuzzOAuthMessage(f *testing.F) {
	for _, s := range []string{
		"user=alice@example.test\x01auth=Bearer tok.en-_~+/==\x01\x01",
		"n,a=alice@example.test,\x01host=imap.example.test\x01port=993\x01auth=Bearer abc\x01\x01",
		"y,a=a=2Cb=3Dc,\x01auth=bearer x\x01\x01",
		"n,,\x01auth=Bearer x\x01\x01",
		"\x01",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		for _, parse := range []func([]byte) (string, string, error){parseXOAUTH2, parseOAUTHBEARER} {
			user, token, err := parse(msg)
			if err != nil {
				if user != "" || token != "" {
					t.Fatalf("%q: error %v with user %q, token %q", msg, err, user, token)
				}
				continue
			}
			if user == "" || !printable(user) || !b64token(token) {
				t.Fatalf("%q: accepted user %q, token %q", msg, user, token)
			}
			if strings.Contains(user, "\x01") {
				t.Fatalf("%q: user %q holds a separator", msg, user)
			}
			escaped := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(user)
			u2, t2, err := parseOAUTHBEARER([]byte("n,a=" + escaped + ",\x01auth=Bearer " + token + "\x01\x01"))
			if err != nil || u2 != user || t2 != token {
				t.Fatalf("%q: OAUTHBEARER round trip: %q, %q, %v", msg, u2, t2, err)
			}
			u3, t3, err := parseXOAUTH2([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
			if err != nil || u3 != user || t3 != token {
				t.Fatalf("%q: XOAUTH2 round trip: %q, %q, %v", msg, u3, t3, err)
			}
		}
	})
}
