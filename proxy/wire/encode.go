package wire

import (
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"
)

// AppendStatus appends the status response "tag TYPE [CODE] text\r\n".
// An empty tag means an untagged response ("*"), an empty code or text is
// left out. CR, LF and NUL are removed from every part (and "]" from the
// code) so that no value can end the line or the code early; text from a
// backend or a user name still must not go into an ALERT.
func AppendStatus(dst []byte, tag string, typ imap.StatusResponseType, code imap.ResponseCode, text string) []byte {
	if tag == "" {
		tag = "*"
	}
	dst = appendClean(dst, tag, false)
	dst = append(dst, ' ')
	dst = appendClean(dst, string(typ), false)
	if code != "" {
		dst = append(dst, " ["...)
		dst = appendClean(dst, string(code), true)
		dst = append(dst, ']')
	}
	if text != "" {
		dst = append(dst, ' ')
		dst = appendClean(dst, text, false)
	}
	return append(dst, "\r\n"...)
}

// WriteStatus writes a status response (see AppendStatus) in a single
// Write. A *bufio.Writer still needs flushing.
func WriteStatus(w io.Writer, tag string, typ imap.StatusResponseType, code imap.ResponseCode, text string) error {
	var buf [128]byte
	_, err := w.Write(AppendStatus(buf[:0], tag, typ, code, text))
	return err
}

func appendClean(dst []byte, s string, inCode bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\r' || c == '\n' || c == 0:
		case c == ']' && inCode:
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// NeedsLiteral reports whether s cannot be sent as a quoted string: it
// contains CR, LF, NUL or 8-bit bytes (quoted 8-bit text is only valid
// after UTF8=ACCEPT, and backends differ in what they accept). Note that
// NUL cannot be sent in a literal either (IMAP4rev1 has no literal8 for
// commands); callers must refuse such values.
func NeedsLiteral(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\r' || c == '\n' || c == 0 || c >= 0x80 {
			return true
		}
	}
	return false
}

// AppendQuoted appends s as a quoted string, escaping " and \. 8-bit bytes
// are kept. CR, LF and NUL cannot be quoted: they are dropped, so that the
// output can never end the line. Check NeedsLiteral first when s may
// contain them.
func AppendQuoted(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\r', '\n', 0:
		case '"', '\\':
			dst = append(dst, '\\', c)
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

// AppendLiteralHeader appends "{n}\r\n", or "{n+}\r\n" for a
// non-synchronizing literal. In a command, the data of a synchronizing
// literal may only be sent after the server's "+" continuation request.
func AppendLiteralHeader(dst []byte, n int, nonSync bool) []byte {
	dst = append(dst, '{')
	dst = strconv.AppendInt(dst, int64(n), 10)
	if nonSync {
		dst = append(dst, '+')
	}
	return append(dst, "}\r\n"...)
}

// AppendString appends s as an IMAP string: quoted, or a synchronizing
// literal (header and data) when NeedsLiteral(s). Use it for string and
// nstring values in server responses such as ID, where atoms are not
// allowed. A client writing a command must not use it for values that
// need a literal: it has to wait for "+" between header and data.
func AppendString(dst []byte, s string) []byte {
	if NeedsLiteral(s) {
		dst = AppendLiteralHeader(dst, len(s), false)
		return append(dst, s...)
	}
	return AppendQuoted(dst, s)
}

// AppendAString appends s as an astring: an atom when every byte is an
// ASTRING-CHAR (and s is not NIL, which a reader of an nstring would take
// for nil), else as AppendString does.
func AppendAString(dst []byte, s string) []byte {
	if isAString(s) && !strings.EqualFold(s, "NIL") {
		return append(dst, s...)
	}
	return AppendString(dst, s)
}

func isAString(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !astringChar[s[i]] {
			return false
		}
	}
	return true
}
