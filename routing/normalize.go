package routing

import (
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrInvalidUser means a login name was refused by Normalize. The proxy
// must answer it like a wrong password. Errors wrapping it never contain
// the refused input, which may be a mistyped password.
var ErrInvalidUser = errors.New("routing: invalid user name")

// MaxUserLen is the longest user name Normalize accepts, in bytes, after the
// default domain is appended.
const MaxUserLen = 255

// forbidden are ASCII characters that have no business in a mail login but
// mean something to Redis patterns and hash tags, to Dovecot's %-variables,
// to IMAP quoting and to LDAP or SQL filters further down the line.
const forbidden = "\"\\*?[]{}%()"

// Normalize turns a login name as typed by a client into the canonical form
// used as routing key: surrounding spaces removed, lower-cased, and with
// "@"+defaultDomain appended when it has no domain and defaultDomain is not
// empty.
//
// It refuses names that are empty or longer than MaxUserLen bytes, that are
// not valid UTF-8, or that contain a space, a control or format character
// (CR, LF, NUL, DEL, bidi overrides and friends), one of "\*?[]{}%() or more
// than one '@'. A name with '@' must have a non-empty local part and domain.
//
// Lower-casing uses strings.ToLower; no Unicode normalisation (NFKC) is done,
// so a full-width "ＵＳＥＲ" stays a different user from "user".
func Normalize(user, defaultDomain string) (string, error) {
	// Only spaces are trimmed: a trailing CR or LF means the client's
	// framing is broken, and that must not be silently repaired.
	s := strings.Trim(user, " ")
	if s == "" {
		return "", invalid("empty")
	}
	// Checked before anything else so that a huge input costs nothing more.
	if len(s) > MaxUserLen {
		return "", invalid("too long")
	}
	if !strings.Contains(s, "@") && defaultDomain != "" {
		s += "@" + defaultDomain
	}
	if err := checkChars(s); err != nil {
		return "", err
	}
	s = strings.ToLower(s)
	// Lower-casing can change the length (U+0130 becomes two code points),
	// and the default domain adds to it: check the final key.
	if len(s) > MaxUserLen {
		return "", invalid("too long")
	}
	local, domain, found := strings.Cut(s, "@")
	switch {
	case !found:
		return s, nil
	case local == "":
		return "", invalid("empty local part")
	case domain == "":
		return "", invalid("empty domain")
	case strings.Contains(domain, "@"):
		return "", invalid("more than one '@'")
	}
	return s, nil
}

func checkChars(s string) error {
	if !utf8.ValidString(s) {
		return invalid("not valid UTF-8")
	}
	for _, r := range s {
		switch {
		case r < utf8.RuneSelf:
			// ASCII fast path: the Unicode tables below cost more.
			switch {
			case r == ' ':
				return invalid("contains white space")
			case r < ' ' || r == 0x7f:
				return invalid("contains a control character")
			case strings.ContainsRune(forbidden, r):
				return invalid("forbidden character")
			}
		case unicode.IsSpace(r):
			return invalid("contains white space")
		case unicode.IsControl(r), unicode.Is(unicode.Cf, r):
			return invalid("contains a control character")
		}
	}
	return nil
}

type invalidUserError string

func (e invalidUserError) Error() string { return "routing: invalid user name: " + string(e) }
func (e invalidUserError) Unwrap() error { return ErrInvalidUser }

func invalid(why string) error { return invalidUserError(why) }
