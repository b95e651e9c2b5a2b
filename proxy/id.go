package proxy

import (
	"strings"

	"github.com/emersion/go-imap/v2"

	"github.com/portico-mail/portico/proxy/wire"
)

// RFC 2971 §3.3 limits; a client that exceeds them just loses the excess.
const (
	maxIDPairs    = 30
	maxIDKeyLen   = 30
	maxIDValueLen = 1024
)

// ID (RFC 2971) is answered locally. The client's fields are kept, within
// the RFC's limits, and forwarded to a backend that trusts Portico; its
// x-* fields are dropped there, since a backend in whose
// login_trusted_networks Portico sits would believe them.
func (s *session) handleID(cmd *wire.Command) action {
	if len(cmd.Args) != 1 {
		return s.badCommand(cmd.Tag, "ID takes one argument")
	}
	arg := cmd.Args[0]
	var fields [][2]string
	switch arg.Kind {
	case wire.KindNIL:
	case wire.KindList:
		if len(arg.List)%2 != 0 {
			return s.badCommand(cmd.Tag, "ID list must hold field-value pairs")
		}
		for i := 0; i < len(arg.List); i += 2 {
			k, v := arg.List[i], arg.List[i+1]
			if k.Kind != wire.KindString || (v.Kind != wire.KindString && v.Kind != wire.KindNIL) {
				return s.badCommand(cmd.Tag, "ID fields must be strings")
			}
			if v.Kind == wire.KindNIL || !idFieldOK(k.Value, v.Value) || len(fields) == maxIDPairs {
				continue
			}
			fields = append(fields, [2]string{k.Value, v.Value})
		}
	default:
		return s.badCommand(cmd.Tag, "ID takes a list or NIL")
	}
	s.clientID = fields
	s.bw.WriteString("* ID NIL\r\n")
	s.writeStatus(cmd.Tag, imap.StatusResponseTypeOK, "", "ID completed")
	return actContinue
}

func idFieldOK(k, v string) bool {
	if k == "" || len(k) > maxIDKeyLen || len(v) > maxIDValueLen {
		return false
	}
	if strings.HasPrefix(strings.ToLower(k), "x-") {
		return false
	}
	return printable(k) && printable(v)
}

// printable rejects control characters, which a literal could carry.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}
