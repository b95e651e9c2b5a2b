package app

import (
	"net"
	"testing"
)

func TestAddrMatches(t *testing.T) {
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, tc := range []struct {
		want, got string
		ok        bool
	}{
		{":993", "[::]:993", true},
		{":993", "0.0.0.0:993", true},
		{"0.0.0.0:993", "[::]:993", true},
		{"[::]:993", "0.0.0.0:993", true},
		{":993", "127.0.0.1:993", false},
		{":993", "[::]:143", false},
		{"127.0.0.1:993", "127.0.0.1:993", true},
		{"127.0.0.1:993", "[::ffff:127.0.0.1]:993", true},
		{"127.0.0.1:993", "127.0.0.2:993", false},
		{"127.0.0.1:993", "0.0.0.0:993", false},
		{"[::1]:993", "[::1]:993", true},
		{"localhost:993", "127.0.0.1:993", false},
		{"127.0.0.1", "127.0.0.1:993", false},
	} {
		if ok := addrMatches(tc.want, tcp(tc.got)); ok != tc.ok {
			t.Errorf("addrMatches(%q, %s) = %v, want %v", tc.want, tc.got, ok, tc.ok)
		}
	}
	if addrMatches(":993", &net.UnixAddr{Name: "/run/x", Net: "unix"}) {
		t.Error("a unix socket matched")
	}
}
