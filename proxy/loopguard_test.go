package proxy

import (
	"net/netip"
	"testing"
)

// TestOwnUpstreamMatchesBothEnds: a client is our own backend login only
// when its connection is that login's connection, both ends. On one host
// a client's source port may equal the local port of one of our
// connections to another address, and that client is no loop.
func TestOwnUpstreamMatchesBothEnds(t *testing.T) {
	var s Server
	ours := netip.MustParseAddrPort("127.0.0.1:40001")
	listener := netip.MustParseAddrPort("127.0.0.1:993")
	dovecot := netip.MustParseAddrPort("127.0.0.1:143")

	done := s.connected(ours, listener) // a login routed to ourselves
	if !s.ownUpstream(ours, listener) {
		t.Error("our own login coming back is not recognised")
	}
	if !s.ownUpstream(netip.MustParseAddrPort("[::ffff:127.0.0.1]:40001"), listener) {
		t.Error("our own login coming back over a v4-mapped address is not recognised")
	}
	done()
	if s.ownUpstream(ours, listener) {
		t.Error("a finished login is still recognised")
	}

	done = s.connected(ours, dovecot) // a login to a real backend
	defer done()
	if s.ownUpstream(ours, listener) {
		t.Error("a client that shares a source port with our login to another address is taken for a loop")
	}
}
