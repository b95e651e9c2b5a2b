package proxy

import (
	"errors"
	"strings"
)

// The client messages of the OAuth 2.0 SASL mechanisms, parsed strictly:
// whatever does not follow the grammar exactly is refused, so that a user
// name or a token can never be read from the wrong part of a message.

var errOAuthMessage = errors.New("malformed OAuth message")

// parseXOAUTH2 parses Google's XOAUTH2 message,
// "user=" user %x01 "auth=Bearer " token %x01 %x01.
func parseXOAUTH2(msg []byte) (user, token string, err error) {
	pairs, ok := kvPairs(string(msg))
	if !ok || len(pairs) != 2 || pairs[0][0] != "user" || pairs[1][0] != "auth" {
		return "", "", errOAuthMessage
	}
	user = pairs[0][1]
	if user == "" || !printable(user) {
		return "", "", errOAuthMessage
	}
	if token, ok = bearer(pairs[1][1]); !ok {
		return "", "", errOAuthMessage
	}
	return user, token, nil
}

// parseOAUTHBEARER parses an RFC 7628 §3.1 client response:
//
//	gs2-header %x01 *(key "=" value %x01) %x01
//
// The GS2 header must name the user (a=): Portico routes by it. Channel
// binding ("p=") is not offered, so a client asking for it is refused.
// Keys other than auth (host, port, extensions) are checked for form and
// otherwise ignored, as the RFC says.
func parseOAUTHBEARER(msg []byte) (user, token string, err error) {
	s := string(msg)
	if !strings.HasPrefix(s, "n,") && !strings.HasPrefix(s, "y,") {
		return "", "", errOAuthMessage
	}
	s = s[2:]
	authzid, rest, ok := strings.Cut(s, ",")
	if !ok || !strings.HasPrefix(authzid, "a=") || !strings.HasPrefix(rest, "\x01") {
		return "", "", errOAuthMessage
	}
	if user, ok = saslname(authzid[2:]); !ok || user == "" || !printable(user) {
		return "", "", errOAuthMessage
	}
	pairs, ok := kvPairs(rest[1:])
	if !ok {
		return "", "", errOAuthMessage
	}
	seen := make(map[string]bool, len(pairs))
	for _, p := range pairs {
		if seen[p[0]] {
			return "", "", errOAuthMessage
		}
		seen[p[0]] = true
		for i := 0; i < len(p[0]); i++ {
			if c := p[0][i] | 0x20; c < 'a' || c > 'z' {
				return "", "", errOAuthMessage
			}
		}
		if p[0] == "auth" {
			if token, ok = bearer(p[1]); !ok {
				return "", "", errOAuthMessage
			}
		}
	}
	if token == "" {
		return "", "", errOAuthMessage
	}
	return user, token, nil
}

// kvPairs splits "k=v" %x01 ... "k=v" %x01 %x01 into its pairs. Values
// may hold spaces and printable characters only (RFC 7628 allows CR, LF
// and HTAB too, but no value Portico reads needs them).
func kvPairs(s string) ([][2]string, bool) {
	if !strings.HasSuffix(s, "\x01\x01") {
		return nil, false
	}
	s = s[:len(s)-2]
	if s == "" {
		return nil, false
	}
	var pairs [][2]string
	for _, kv := range strings.Split(s, "\x01") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || !printable(v) {
			return nil, false
		}
		pairs = append(pairs, [2]string{k, v})
	}
	return pairs, true
}

// bearer returns the token of "Bearer <b64token>" (RFC 6750 §2.1; the
// scheme name is case-insensitive).
func bearer(v string) (string, bool) {
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || !b64token(tok) {
		return "", false
	}
	return tok, true
}

// b64token is RFC 6750's token syntax:
// 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func b64token(s string) bool {
	i := 0
	for ; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~+/", c) >= 0) {
			break
		}
	}
	if i == 0 {
		return false
	}
	for ; i < len(s); i++ {
		if s[i] != '=' {
			return false
		}
	}
	return true
}

// saslname decodes RFC 5801's saslname: "," and "=" appear only as =2C
// and =3D.
func saslname(s string) (string, bool) {
	if !strings.Contains(s, "=") {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '=' {
			b.WriteByte(s[i])
			continue
		}
		switch {
		case strings.HasPrefix(s[i:], "=2C"):
			b.WriteByte(',')
		case strings.HasPrefix(s[i:], "=3D"):
			b.WriteByte('=')
		default:
			return "", false
		}
		i += 2
	}
	return b.String(), true
}
