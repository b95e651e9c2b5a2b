package config

import (
	"net/url"
	"sort"
	"strings"
	"time"
)

// HTTPAuth configures an auth service spoken to as nginx's mail proxy
// speaks to its auth_http service (auth.http), so that a service written
// for nginx works unchanged.
type HTTPAuth struct {
	// URL of the service: http://host[:port]/path (nginx's auth_http),
	// https://, or nginx's unix:/path/to/socket:/uri. Required.
	URL string `yaml:"url"`
	// Timeout bounds each request, connecting included (nginx's
	// auth_http_timeout). Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// Headers are sent with every request (nginx's auth_http_header),
	// e.g. a key the service checks; a value may be {env: NAME} or
	// {file: PATH}.
	Headers map[string]Secret `yaml:"headers"`
	// Backend says who names the user's backend: "answer" (the default,
	// as nginx: an OK must carry Auth-Server and Auth-Port, which override
	// routing) or "routing" (the service only checks the password;
	// routing finds the backend and Auth-Server/Auth-Port are ignored).
	Backend string `yaml:"backend"`
	// TLS towards an https:// service; default system roots.
	TLS *ClientTLS `yaml:"tls"`
}

const (
	HTTPAuthBackendAnswer  = "answer"
	HTTPAuthBackendRouting = "routing"

	defaultHTTPAuthTimeout = 5 * time.Second
)

// HTTPNamesBackends reports whether auth.http's answers name every
// user's backend, so that routing may be left empty, as with nginx.
func (a *Auth) HTTPNamesBackends() bool {
	return a.Passwords == "http" && a.HTTP != nil && a.HTTP.Backend != HTTPAuthBackendRouting
}

func (h *HTTPAuth) applyDefaults() {
	setDur(&h.Timeout, defaultHTTPAuthTimeout)
	if h.Backend == "" {
		h.Backend = HTTPAuthBackendAnswer
	}
}

func (h *HTTPAuth) validate(v *validator, p string) {
	u, err := url.Parse(h.URL)
	sock, uri, _ := strings.Cut(strings.TrimPrefix(h.URL, "unix:"), ":")
	switch {
	case h.URL == "":
		v.add(p+".url", "is required (http://host[:port]/path, as nginx's auth_http)")
	case strings.HasPrefix(h.URL, "unix:"):
		if !strings.HasPrefix(sock, "/") || uri != "" && !strings.HasPrefix(uri, "/") {
			v.add(p+".url", "must be unix:/path/to/socket or unix:/path/to/socket:/uri, not %q", h.URL)
		}
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		v.add(p+".url", "must be http://host[:port]/path, https://... or unix:/path/to/socket:/uri, not %q", h.URL)
	}
	checkDur(v, p+".timeout", h.Timeout, 10*time.Millisecond, time.Minute)
	switch h.Backend {
	case HTTPAuthBackendAnswer, HTTPAuthBackendRouting:
	default:
		v.add(p+".backend", `must be "answer" (Auth-Server/Auth-Port name it) or "routing", not %q`, h.Backend)
	}
	for _, name := range h.headerNames() {
		switch {
		case !validHeaderName(name):
			v.add(p+".headers", "%q is not an HTTP header name", name)
		case reservedHTTPAuthHeader(name):
			v.add(p+".headers."+name, "is sent by Portico itself")
		case h.Headers[name].Source == "inline" && !validHeaderValue(h.Headers[name].Value):
			// The value itself stays out of the message: it may be a key.
			v.add(p+".headers."+name, "must not contain control characters")
		}
	}
	if h.TLS != nil && u != nil && u.Scheme != "https" {
		v.add(p+".tls", "is for https:// URLs")
	}
	checkClientTLS(v, p+".tls", h.TLS)
}

// warnings adds auth.http's risky but valid settings to Warnings.
func (h *HTTPAuth) warnings(add func(path, format string, args ...any)) {
	if u, err := url.Parse(h.URL); err == nil && u.Scheme == "http" && !IsLoopbackHost(u.Hostname()) {
		// nginx's auth_http has no TLS, so services often listen on
		// another host in clear; every Auth-Pass then crosses the network.
		add("auth.http.url", "users' passwords are sent in clear to %s; use https:// or a service on this host", u.Host)
	}
	if h.TLS != nil && h.TLS.InsecureSkipVerify {
		add("auth.http.tls.insecure_skip_verify", "the service's certificate is not verified: anyone on the path can impersonate it, collect passwords and accept any")
	}
}

// headerNames are the names of Headers, sorted, so that errors and
// requests do not change order from run to run.
func (h *HTTPAuth) headerNames() []string {
	names := make([]string, 0, len(h.Headers))
	for n := range h.Headers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// HeaderList is Headers in name order, with the secrets read.
func (h *HTTPAuth) HeaderList() [][2]string {
	var l [][2]string
	for _, n := range h.headerNames() {
		l = append(l, [2]string{n, h.Headers[n].Value})
	}
	return l
}

func (h *HTTPAuth) resolveSecrets(resolve func(*Secret, string), p string) {
	for _, n := range h.headerNames() {
		s := h.Headers[n]
		resolve(&s, p+".headers."+n)
		h.Headers[n] = s
	}
}

// reservedHTTPAuthHeader reports whether name is one Portico sends as
// nginx does, or one HTTP itself manages.
func reservedHTTPAuthHeader(name string) bool {
	n := strings.ToLower(name)
	if strings.HasPrefix(n, "auth-") || strings.HasPrefix(n, "proxy-protocol-") {
		return true
	}
	switch n {
	case "host", "client-ip", "client-host", "content-length", "transfer-encoding", "connection":
		return true
	}
	return false
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		// RFC 9110 tchar.
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func validHeaderValue(s string) bool {
	for _, c := range []byte(s) {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
