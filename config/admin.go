package config

import (
	"net"
	"net/netip"
	"strings"
)

// minAdminToken is the shortest admin token accepted: the token guards
// pprof and the metrics, and a short one is guessed over the network.
const minAdminToken = 16

func (c *Config) validateAdmin(v *validator) {
	a := c.Admin
	if a == nil {
		return
	}
	v.bind("admin.address", a.Address, "")
	host, _, err := net.SplitHostPort(a.Address)
	if err != nil {
		return // reported by bind
	}
	switch kind, _, _ := strings.Cut(a.Token.Source, ":"); kind {
	case "":
		if !IsLoopbackHost(host) {
			v.add("admin.token", "is required when admin.address %q is not a loopback address: anyone who reaches it could read the metrics and profile the process; use {env: NAME} or {file: PATH}", a.Address)
		}
		return
	case "inline":
		// Config files are often world-readable and kept in version
		// control; the token opens pprof.
		v.add("admin.token", "must be {env: NAME} or {file: PATH}, not written in the config file")
		return
	}
	if a.Token.Value != "" && len(a.Token.Value) < minAdminToken {
		v.add("admin.token", "must be at least %d characters (for instance `openssl rand -hex 32`)", minAdminToken)
	}
}

// IsLoopbackHost reports whether a listening host only accepts
// connections from this machine: "localhost" or a loopback IP address.
// The empty host (all interfaces) is not.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
