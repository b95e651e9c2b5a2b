package proxy

import (
	"net/netip"
	"strconv"
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
// login_trusted_networks Portico sits would believe them. From a client in
// Server.TrustedNetworks (a front proxy), the x-* fields Portico itself
// sends are believed instead: see idExtension.
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
			if v.Kind == wire.KindNIL {
				continue
			}
			if isXField(k.Value) {
				s.idExtension(k.Value, v.Value)
				continue
			}
			if !idFieldOK(k.Value, v.Value) || len(fields) == maxIDPairs {
				continue
			}
			fields = append(fields, [2]string{k.Value, v.Value})
		}
		s.applyForwarded()
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

func isXField(k string) bool {
	return len(k) >= 2 && (k[0] == 'x' || k[0] == 'X') && k[1] == '-'
}

// maxTrustedTTL caps an x-proxy-ttl from a trusted network.
const maxTrustedTTL = 64

// idExtension takes in an x-* ID field. From a trusted network (a front
// proxy, as Dovecot honours its login_trusted_networks), the client's
// real address, the address it connected to, the first proxy's session id
// and the hops left are believed, each when well-formed. From anyone, an
// x-session-id that is one of this proxy's own shows a loop: only Portico
// knows its session ids, so that costs nobody but a forger anything.
func (s *session) idExtension(k, v string) {
	if len(v) > maxIDValueLen || !printable(v) {
		return
	}
	k = strings.ToLower(k)
	if k == "x-session-id" && ownSessionID(v) {
		s.ab.loop = "x-session-id " + v + " is this proxy's own session"
	}
	if !s.ab.trusted {
		return
	}
	f := &s.ab.fwd
	switch k {
	case "x-originating-ip":
		f.ip, _ = netip.ParseAddr(v)
	case "x-originating-port":
		f.port = parsePort(v)
	case "x-connected-ip":
		f.lip, _ = netip.ParseAddr(v)
	case "x-connected-port":
		f.lport = parsePort(v)
	case "x-session-id":
		if len(v) <= 128 {
			s.ab.origin = v
		}
	case "x-proxy-ttl":
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			s.ab.ttl = min(n, maxTrustedTTL)
			if n <= 1 {
				// Dovecot's rule: a proxy that gets 1 may not pass the
				// login on.
				s.ab.loop = "x-proxy-ttl " + v + " has run out"
				s.ab.ttl = 1
			}
		}
	}
}

func parsePort(v string) uint16 {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return 0
	}
	return uint16(n)
}

// applyForwarded makes the addresses a trusted front proxy sent the
// session's: the client's for limits, logs, the backend's ID and the
// session registry; the one it connected to for the backend's ID.
func (s *session) applyForwarded() {
	f := s.ab.fwd
	s.ab.fwd = forwarded{}
	if f.ip.IsValid() {
		s.client = netip.AddrPortFrom(f.ip.Unmap().WithZone(""), f.port)
	}
	if f.lip.IsValid() {
		s.local = netip.AddrPortFrom(f.lip.Unmap().WithZone(""), f.lport)
	}
}
