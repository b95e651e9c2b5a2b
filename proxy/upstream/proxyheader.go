package upstream

import (
	"io"
	"net"
	"net/netip"

	"github.com/pires/go-proxyproto"
)

// writeProxyHeader writes a PROXY protocol v2 header saying that the
// connection comes from src and was made to dst (Dovecot's
// `haproxy = yes` listeners log src as rip and dst as lip). When either
// address is unknown it writes a LOCAL header, which a backend takes as a
// connection of the proxy's own: better than a made-up address.
func writeProxyHeader(w io.Writer, src, dst netip.AddrPort) error {
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if src.IsValid() && dst.IsValid() {
		// A v4 and a v6 address make a TCPv6 header with the v4 one mapped.
		h = proxyproto.HeaderProxyFromAddrs(2,
			net.TCPAddrFromAddrPort(unmap(src)), net.TCPAddrFromAddrPort(unmap(dst)))
	}
	_, err := h.WriteTo(w)
	return err
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// addrs returns the client and connected addresses of id, each invalid when
// unknown.
func (id *IDInfo) addrs() (client, connected netip.AddrPort) {
	if id == nil {
		return
	}
	parse := func(ip string, port int) netip.AddrPort {
		a, err := netip.ParseAddr(ip)
		if err != nil || port < 0 || port > 65535 {
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(a.WithZone(""), uint16(port))
	}
	return parse(id.ClientIP, id.ClientPort), parse(id.ConnectedIP, id.ConnectedPort)
}
