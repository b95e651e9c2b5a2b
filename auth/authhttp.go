package auth

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// DefaultHTTPTimeout bounds one question to an auth service when
// HTTP.Timeout is zero. (nginx waits 60s by default; a login that waits
// that long has been given up by its client long before.)
const DefaultHTTPTimeout = 5 * time.Second

// HTTP is a proxy.Authenticator for password logins that asks an HTTP
// auth service written for nginx's mail proxy (its auth_http directive),
// with the request nginx 1.22 sends and the answers it understands, so
// that an operator can put Portico in front of an existing service
// without changing the service.
//
// The request is a GET without a body carrying the login in headers
// (Auth-Method, Auth-User, Auth-Pass, Auth-Protocol, Auth-Login-Attempt,
// Client-IP, Auth-SSL…). The answer "Auth-Status: OK" accepts the login;
// with Auth-Server and Auth-Port it names the backend, with Auth-User and
// Auth-Pass the credentials to log in there with. Any other Auth-Status
// is a refusal; Auth-Wait: N lets the client try again after N seconds,
// without it the session ends, as nginx does. The service being down,
// slow, answering 5xx or without Auth-Status is an error (the client gets
// NO [UNAVAILABLE]), never a refusal.
//
// Connections to the service are kept alive between logins when it
// allows (HTTP/1.1); a service that answers HTTP/1.0 and closes, as
// nginx expects, works too.
type HTTP struct {
	// URL is the service, http:// (or https://) host[:port]/path, or as
	// nginx writes a Unix socket, unix:/path/to/socket[:/path].
	URL string
	// Timeout bounds one request, connecting included; zero means
	// DefaultHTTPTimeout. The caller's context may end it sooner.
	Timeout time.Duration
	// Headers are sent with every request after nginx's own, like
	// nginx's auth_http_header (e.g. a shared secret for the service).
	Headers []Header
	// KeepRouting makes the answer decide the password only: the user's
	// backend is found by Portico's routing (Redis, static routes), and
	// Auth-Server/Auth-Port are neither needed nor used. Without it, as
	// in nginx, an OK must name the backend.
	KeepRouting bool
	// Backend turns the address an answer names into the backend to log
	// in to (the configured backend of that address, or one made from
	// the defaults), or fails when it may not take logins (down,
	// drained). Nil means a plain-IMAP backend named by its address.
	Backend func(ctx context.Context, addr netip.AddrPort) (*routing.Backend, error)
	// Master, when set, is who the proxy logs in to the backend as after
	// an OK that rewrites no credentials, on behalf of the user (see
	// Passwords); the zero Master means with the client's credentials,
	// as nginx does.
	Master Master
	// TLSConfig is for an https:// URL; nil means the system roots.
	TLSConfig *tls.Config
	// Client sends the requests; nil means one of HTTP's own, with
	// keep-alive and no environment proxy.
	Client *http.Client
	// Logger receives the service's refusals and failures; nil means
	// slog.Default(). Passwords never reach it.
	Logger *slog.Logger

	once   sync.Once
	client *http.Client
	url    string // what is asked for: URL, or http://localhost/uri for a socket
	host   string // the Host header: the URL's host without its port, as nginx sends it
	err    error
}

// Header is one extra request header.
type Header struct {
	Name, Value string
}

// Close drops the idle connections to the service.
func (h *HTTP) Close() {
	h.init()
	h.client.CloseIdleConnections()
}

func (h *HTTP) init() {
	h.once.Do(func() {
		dialer := &net.Dialer{Timeout: h.timeout(), KeepAlive: 30 * time.Second}
		dial := dialer.DialContext
		h.url = h.URL
		if rest, ok := strings.CutPrefix(h.URL, "unix:"); ok {
			// nginx's unix:/path/to/socket[:/uri]. Its Host header is
			// "localhost".
			sock, uri, _ := strings.Cut(rest, ":")
			if sock == "" || !strings.HasPrefix(uri, "/") && uri != "" {
				h.err = fmt.Errorf("auth http: url %q: want unix:/path/to/socket[:/uri]", h.URL)
			}
			h.url, h.host = "http://localhost"+cmp.Or(uri, "/"), "localhost"
			dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, "unix", sock)
			}
		} else {
			u, err := url.Parse(h.URL)
			switch {
			case err != nil:
				h.err = fmt.Errorf("auth http: url: %w", err)
			case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
				h.err = fmt.Errorf("auth http: url %q: want http://host[:port]/path", h.URL)
			default:
				h.host = u.Hostname()
				if strings.Contains(h.host, ":") {
					h.host = "[" + h.host + "]"
				}
			}
		}
		h.client = h.Client
		if h.client == nil {
			h.client = &http.Client{Transport: &http.Transport{
				// A login must never take a detour through HTTP_PROXY.
				Proxy:       nil,
				DialContext: dial,
				// Enough idle connections for a burst of logins; more are
				// opened when needed and closed after use.
				MaxIdleConnsPerHost:    64,
				IdleConnTimeout:        60 * time.Second,
				DisableCompression:     true, // nginx sends no Accept-Encoding
				MaxResponseHeaderBytes: 64 << 10,
				TLSClientConfig:        h.TLSConfig,
			}}
		}
	})
}

func (h *HTTP) timeout() time.Duration {
	if h.Timeout > 0 {
		return h.Timeout
	}
	return DefaultHTTPTimeout
}

func (h *HTTP) logger() *slog.Logger {
	if h.Logger != nil {
		return h.Logger
	}
	return slog.Default()
}

// Authenticate implements proxy.Authenticator.
func (h *HTTP) Authenticate(ctx context.Context, req proxy.AuthRequest) (proxy.AuthResult, error) {
	h.init()
	if h.err != nil {
		return proxy.AuthResult{}, h.err
	}
	if m := strings.ToUpper(req.Mechanism); m == "XOAUTH2" || m == "OAUTHBEARER" {
		// nginx has no such method, so no service written for it would
		// know what to do with a token.
		return proxy.AuthResult{}, fmt.Errorf("auth http: mechanism %s carries no password", req.Mechanism)
	}
	for asked := 1; ; asked++ {
		res, err := h.ask(ctx, req)
		var w *waitError
		if !errors.As(err, &w) {
			return res, err
		}
		// Auth-Status WAIT: nginx asks again after Auth-Wait seconds, as
		// often as it is told to; Portico as long as the caller's
		// context lasts, and at most maxAsks times.
		if asked == maxAsks {
			return proxy.AuthResult{}, fmt.Errorf("auth http: Auth-Status WAIT %d times", asked)
		}
		t := time.NewTimer(w.d)
		select {
		case <-ctx.Done():
			t.Stop()
			return proxy.AuthResult{}, fmt.Errorf("auth http: Auth-Status WAIT: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// maxAsks bounds how often one login is asked about again after
// Auth-Status WAIT.
const maxAsks = 10

// waitError is an answer of Auth-Status WAIT: ask again after d.
type waitError struct{ d time.Duration }

func (w *waitError) Error() string { return fmt.Sprintf("auth http: Auth-Status WAIT (%v)", w.d) }

// ask sends the request once and reads the answer.
func (h *HTTP) ask(ctx context.Context, req proxy.AuthRequest) (proxy.AuthResult, error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout())
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return proxy.AuthResult{}, fmt.Errorf("auth http: %w", err)
	}
	hr.Host = h.host
	hr.Header = h.header(req)
	resp, err := h.client.Do(hr)
	if err != nil {
		return proxy.AuthResult{}, fmt.Errorf("auth http: %w", err)
	}
	// Read what little body there is, so that the connection can serve
	// the next login.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return h.answer(ctx, req, resp)
}

// header is the request nginx's ngx_mail_auth_http_module sends (1.22),
// in its order and with its spelling: the keys are set directly rather
// than through Header.Set, which would write Client-IP as Client-Ip.
func (h *HTTP) header(req proxy.AuthRequest) http.Header {
	hd := make(http.Header, 16)
	add := func(k, v string) { hd[k] = append(hd[k], v) }
	login := req.Login
	if login == "" {
		login = req.User
	}
	// Every password mechanism is "plain" to nginx: LOGIN, AUTHENTICATE
	// PLAIN and AUTHENTICATE LOGIN alike.
	add("Auth-Method", "plain")
	add("Auth-User", escapeMailAuth(login))
	add("Auth-Pass", escapeMailAuth(req.Secret))
	add("Auth-Protocol", cmp.Or(req.Protocol, "imap"))
	add("Auth-Login-Attempt", strconv.Itoa(max(req.Attempt, 1)))
	if req.Client.IsValid() {
		add("Client-IP", req.Client.Addr().String())
	}
	// nginx sends Client-Host only for SMTP, where it resolves the
	// client's name; not for IMAP, so neither does Portico.
	if p := req.ProxySource; p.IsValid() {
		add("Proxy-Protocol-Addr", p.Addr().String())
		add("Proxy-Protocol-Port", strconv.Itoa(int(p.Port())))
		add("Proxy-Protocol-Server-Addr", req.ProxyDest.Addr().String())
		add("Proxy-Protocol-Server-Port", strconv.Itoa(int(req.ProxyDest.Port())))
	}
	if req.TLS {
		add("Auth-SSL", "on")
		if v := tlsVersionName(req.TLSVersion); v != "" {
			add("Auth-SSL-Protocol", v)
		}
		if c := cipherName(req.CipherSuite); c != "" {
			add("Auth-SSL-Cipher", c)
		}
		// Auth-SSL-Verify, -Subject, -Issuer, -Serial, -Fingerprint and
		// -Cert describe a client certificate; Portico asks for none.
	}
	for _, x := range h.Headers {
		add(x.Name, x.Value)
	}
	// Go's client would add "User-Agent: Go-http-client/1.1"; nginx sends
	// none, and an empty value suppresses it.
	hd["User-Agent"] = []string{""}
	return hd
}

// answer reads the service's answer as ngx_mail_auth_http_process_headers
// does, stricter where nginx's leniency could let a broken service log
// someone in.
func (h *HTTP) answer(ctx context.Context, req proxy.AuthRequest, resp *http.Response) (proxy.AuthResult, error) {
	// nginx ignores the status line. A 5xx, though, is a service that
	// failed (a PHP error page, a gateway with no application behind it),
	// whatever headers came with it.
	if resp.StatusCode >= 500 {
		return proxy.AuthResult{}, fmt.Errorf("auth http: service answered %s", resp.Status)
	}
	status, ok := last(resp.Header, "Auth-Status")
	switch {
	case !ok:
		// nginx would take a bare Auth-Server as a yes; an answer that
		// says nothing is more likely a web server that is not the
		// auth service.
		return proxy.AuthResult{}, fmt.Errorf("auth http: answer %s without Auth-Status", resp.Status)
	case status == "WAIT":
		// nginx's undocumented "ask again after Auth-Wait seconds".
		return proxy.AuthResult{}, &waitError{authWait(resp.Header)}
	case status != "OK":
		return h.refusal(req, status, resp.Header), nil
	}
	var res proxy.AuthResult
	res.OK = true
	u, hasUser := last(resp.Header, "Auth-User")
	p, hasPass := last(resp.Header, "Auth-Pass")
	if hasUser || hasPass {
		// Used as sent, not URL-decoded, like nginx.
		res.Upstream = upstream.Credentials{User: req.User, Secret: req.Secret}
		if hasUser {
			res.Upstream.User = u
		}
		if hasPass {
			res.Upstream.Secret = p
		}
		if res.Upstream.User == "" || res.Upstream.Secret == "" {
			return proxy.AuthResult{}, errors.New("auth http: answer with an empty Auth-User or Auth-Pass")
		}
	} else {
		res.Upstream = h.Master.Credentials(req.User)
	}
	if h.KeepRouting {
		return res, nil
	}
	addr, err := serverAddr(resp.Header)
	if err != nil {
		return proxy.AuthResult{}, err
	}
	if h.Backend == nil {
		res.Backend = &routing.Backend{Addr: addr.String()}
		return res, nil
	}
	if res.Backend, err = h.Backend(ctx, addr); err != nil {
		return proxy.AuthResult{}, fmt.Errorf("auth http: backend %s: %w", addr, err)
	}
	return res, nil
}

// refusal is the answer to an Auth-Status other than OK. Its text, which
// nginx shows the client, is only logged: the client gets the answer of
// every wrong password, so that a service's "no such user" cannot tell
// an attacker which users exist.
func (h *HTTP) refusal(req proxy.AuthRequest, status string, hd http.Header) proxy.AuthResult {
	wait := authWait(hd)
	h.logger().Info("auth service refused login", "user", req.User, "client", req.Client.String(),
		"status", truncate(status, 200), "wait", wait)
	// nginx: with Auth-Wait the client may try again after the wait;
	// without it (or with 0) the connection is closed after the answer.
	return proxy.AuthResult{Wait: wait, Close: wait == 0}
}

// authWait is the answer's Auth-Wait, in seconds.
func authWait(hd http.Header) time.Duration {
	w, ok := last(hd, "Auth-Wait")
	if !ok {
		return 0
	}
	// ngx_atoi: digits only; anything else is ignored. An hour is more
	// than any client waits.
	n, err := strconv.ParseUint(w, 10, 32)
	if err != nil {
		return 0
	}
	return min(time.Duration(n)*time.Second, time.Hour)
}

// serverAddr is the backend address of an OK answer: Auth-Server, an IP
// address (nginx does not resolve names there), and Auth-Port.
func serverAddr(hd http.Header) (netip.AddrPort, error) {
	s, ok1 := last(hd, "Auth-Server")
	p, ok2 := last(hd, "Auth-Port")
	if !ok1 || !ok2 || s == "" || p == "" {
		return netip.AddrPort{}, errors.New("auth http: OK without Auth-Server and Auth-Port")
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil || ip.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("auth http: Auth-Server %q is not an IP address", truncate(s, 100))
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return netip.AddrPort{}, fmt.Errorf("auth http: bad Auth-Port %q", truncate(p, 100))
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}

// last returns the last value of a header, as nginx keeps the last one it
// reads.
func last(hd http.Header, key string) (string, bool) {
	v := hd.Values(key)
	if len(v) == 0 {
		return "", false
	}
	return strings.TrimSpace(v[len(v)-1]), true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// escapeMailAuth percent-encodes s as nginx (since 1.5.6) encodes
// Auth-User and Auth-Pass: ngx_escape_uri with NGX_ESCAPE_MAIL_AUTH
// escapes the control characters 0x00-0x1F, space and "%", in upper-case
// hex, and nothing else — not "+", not bytes above 0x7F (UTF-8 goes
// through as is). Portico also escapes DEL (0x7F), which Go's HTTP client
// refuses to send in a header; a service that URL-decodes the value, as
// it must for nginx, gets the same password either way.
func escapeMailAuth(s string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if mailAuthEscaped(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if mailAuthEscaped(c) {
			b = append(b, '%', hex[c>>4], hex[c&0xf])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

func mailAuthEscaped(c byte) bool {
	return c <= ' ' || c == '%' || c == 0x7f
}

// tlsVersionName is the protocol as nginx (OpenSSL) names it in
// Auth-SSL-Protocol.
func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return ""
}

// cipherName is the cipher suite as nginx (OpenSSL) names it in
// Auth-SSL-Cipher. TLS 1.3 suites have the same names in both; the TLS
// 1.2 suites Go can negotiate are listed, anything else keeps Go's name.
func cipherName(id uint16) string {
	if id == 0 {
		return ""
	}
	if n, ok := openSSLCiphers[id]; ok {
		return n
	}
	return tls.CipherSuiteName(id)
}

var openSSLCiphers = map[uint16]string{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:       "ECDHE-ECDSA-AES128-GCM-SHA256",
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256:         "ECDHE-RSA-AES128-GCM-SHA256",
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:       "ECDHE-ECDSA-AES256-GCM-SHA384",
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:         "ECDHE-RSA-AES256-GCM-SHA384",
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: "ECDHE-ECDSA-CHACHA20-POLY1305",
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:   "ECDHE-RSA-CHACHA20-POLY1305",
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA:          "ECDHE-ECDSA-AES128-SHA",
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA:            "ECDHE-RSA-AES128-SHA",
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA:          "ECDHE-ECDSA-AES256-SHA",
	tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA:            "ECDHE-RSA-AES256-SHA",
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256:       "ECDHE-ECDSA-AES128-SHA256",
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256:         "ECDHE-RSA-AES128-SHA256",
	tls.TLS_RSA_WITH_AES_128_GCM_SHA256:               "AES128-GCM-SHA256",
	tls.TLS_RSA_WITH_AES_256_GCM_SHA384:               "AES256-GCM-SHA384",
	tls.TLS_RSA_WITH_AES_128_CBC_SHA:                  "AES128-SHA",
	tls.TLS_RSA_WITH_AES_256_CBC_SHA:                  "AES256-SHA",
}
