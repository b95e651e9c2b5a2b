package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/auth"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/limits"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/routing"
	ptls "github.com/portico-mail/portico/tls"
)

// oauthEnv is one Portico offering XOAUTH2 and OAUTHBEARER in front of a
// real Dovecot, with a test OpenID Connect issuer, Redis routing and the
// Redis brute-force limiter.
type oauthEnv struct {
	is     *testsrv.Issuer
	d      *testsrv.Dovecot
	srv    *proxy.Server
	imaps  string
	caFile string
	roots  *x509.CertPool
	logs   *testsrv.Buffer
	redis  *testsrv.Redis
	dump   func() string
}

const (
	oauthMaster   = "portico-master"
	oauthMasterPW = "master-pw-4fd1"
)

// newOAuthEnv starts the pieces; validate selects Portico's validating
// mode (the Dovecot then has a master passdb) over pass-through (an
// oauth2 passdb asking the issuer).
func newOAuthEnv(t *testing.T, validate bool) *oauthEnv {
	t.Helper()
	e := &oauthEnv{logs: &testsrv.Buffer{}}
	e.is = testsrv.StartIssuer(t)
	e.redis = testsrv.StartRedis(t)
	opts := testsrv.DovecotOptions{Users: map[string]string{aliceUser: alicePass}}
	if validate {
		opts.MasterUser, opts.MasterPassword = oauthMaster, oauthMasterPW
	} else {
		opts.OAuth2IntrospectionURL = e.is.HTTPURL
	}
	e.d = testsrv.StartDovecot(t, opts)

	cert, err := ptls.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e.roots = ptls.CertPool(cert)
	e.caFile = filepath.Join(dir, "ca.pem")
	if err := ptls.WritePEM(cert, e.caFile, filepath.Join(dir, "key.pem")); err != nil {
		t.Fatal(err)
	}
	store, err := ptls.NewStore(cert)
	if err != nil {
		t.Fatal(err)
	}
	rdb := routing.NewRedisClient(routing.RedisOptions{Addrs: []string{e.redis.Addr}})
	t.Cleanup(func() { rdb.Close() })
	e.dump = func() string { return testsrv.DumpRedis(t, rdb) }
	router := &routing.Redis{
		Client:   rdb,
		Backends: map[string]*routing.Backend{"dovecot": {Name: "dovecot", Addr: e.d.Addr, ForwardID: true, LoginTimeout: 5 * time.Second}},
		Timeout:  time.Second,
	}
	if err := router.SetRoute(context.Background(), aliceUser, routing.Record{Backend: "dovecot"}); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(e.logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	baseline := runtime.NumGoroutine()
	e.srv = &proxy.Server{
		Router:    router,
		TLSConfig: ptls.ServerConfig(store, 0),
		Limits:    proxy.Limits{AuthFailureDelay: 200 * time.Millisecond, MaxAuthFailures: 5},
		Limiter:   limits.New(limits.Config{}, rdb, "portico:", logger),
		Logger:    logger,
		// The Dovecot listens on loopback without TLS.
		OAuth: proxy.OAuth{Enabled: true, Scope: "mail", CleartextBackends: !validate},
	}
	if validate {
		o, err := auth.NewOAuth(auth.OAuthConfig{
			Issuer: e.is.URL, Audience: []string{"imap.example.test"},
			IntrospectionURL: e.is.URL + "/introspect", ClientID: e.is.ClientID, ClientSecret: e.is.ClientSecret,
			Master: auth.Master{User: oauthMaster, Password: oauthMasterPW}, HTTPClient: e.is.Client, Logger: logger,
			// Refused tokens with unknown key ids fetch the keys too; the
			// test's few must not meet the throttle.
			JWKSMinRefresh: 50 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		e.srv.Authenticator = &auth.Mux{OAuth: o}
	}
	e.imaps = serveIMAPS(t, e.srv, func() {
		e.is.CloseConnections()
		checkGoroutines(t, baseline)
	})
	return e
}

// checkSecrets fails if a token reaches Portico's log or Redis.
func (e *oauthEnv) checkSecrets(t *testing.T, tokens ...string) {
	t.Helper()
	dump := e.dump()
	for _, tok := range tokens {
		if strings.Contains(e.logs.String(), tok) {
			t.Errorf("a token reached Portico's log")
		}
		if strings.Contains(dump, tok) {
			t.Errorf("a token reached Redis:\n%s", dump)
		}
	}
	if !strings.Contains(dump, "bf:") {
		t.Errorf("the limiter counted no failure:\n%s", dump)
	}
}

const oauthImaplibScript = `
import imaplib, ssl, sys, base64, json
host, port, cafile, user, good, bad = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=cafile)

def xoauth2(tok):
    return ("user=%s\x01auth=Bearer %s\x01\x01" % (user, tok)).encode()

def oauthbearer(tok):
    return ("n,a=%s,\x01host=%s\x01port=%s\x01auth=Bearer %s\x01\x01" % (user, host, port, tok)).encode()

for mech, msg in (("XOAUTH2", xoauth2), ("OAUTHBEARER", oauthbearer)):
    M = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
    assert "AUTH=" + mech in M.capabilities, M.capabilities
    typ, dat = M.authenticate(mech, lambda _: msg(good))
    assert typ == "OK", (typ, dat)
    typ, dat = M.select("INBOX")
    assert typ == "OK", (typ, dat)
    M.logout()
    print(mech.lower(), "ok")

    # A refused token: the error challenge, the dummy answer, then NO.
    M = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
    challenges = []
    def answer(ch):
        if not challenges:
            challenges.append(ch)
            return msg(bad)
        challenges.append(ch)
        return b"\x01"
    try:
        M.authenticate(mech, answer)
        raise SystemExit("a bad token was accepted")
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e), e
    err = json.loads(challenges[1])
    assert err["status"] == "invalid_token" and err["scope"] == "mail", err
    M.logout()
    print(mech.lower(), "refused ok")
`

func runImaplibOAuth(t *testing.T, e *oauthEnv, good, bad string) {
	t.Helper()
	py := mustLookPath(t, "python3")
	script := writeTemp(t, "oauth.py", oauthImaplibScript)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, script, "localhost", port("x://"+e.imaps), e.caFile, aliceUser, good, bad).CombinedOutput()
	if err != nil {
		t.Fatalf("python3 imaplib: %v\n%s", err, out)
	}
	for _, want := range []string{"xoauth2 ok", "xoauth2 refused ok", "oauthbearer ok", "oauthbearer refused ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
}

// runCurlOAuth fetches alice's first message with curl --oauth2-bearer,
// with and without SASL-IR. curl (7.88) picks OAUTHBEARER whenever it is
// offered, whatever --login-options says; python3 covers XOAUTH2.
func runCurlOAuth(t *testing.T, e *oauthEnv, token, bad string, want []byte) {
	t.Helper()
	url := "imaps://localhost:" + port("x://"+e.imaps) + "/INBOX;UID=1"
	base := []string{"--cacert", e.caFile, "--resolve", "localhost:" + port(url) + ":127.0.0.1", "-u", aliceUser + ":", "--oauth2-bearer"}
	for name, opts := range map[string][]string{
		"oauthbearer":         nil, // the message after an empty challenge
		"oauthbearer-sasl-ir": {"--sasl-ir"},
	} {
		args := append(append(append([]string{}, base...), token), opts...)
		if got := runCurl(t, append(args, url)...); got != string(want) {
			t.Errorf("curl %s got %q, want %q", name, got, want)
		}
	}
	// A refused token: curl answers the error challenge and gives up.
	curl := mustLookPath(t, "curl")
	args := append(append([]string{"-sS", "--max-time", "20"}, base...), bad, "--sasl-ir", url)
	out, err := exec.Command(curl, args...).CombinedOutput()
	if err == nil {
		t.Fatalf("curl with a refused token succeeded: %s", out)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 67 { // CURLE_LOGIN_DENIED
		t.Errorf("curl with a refused token: %v, want exit 67 (login denied)\n%s", err, out)
	}
}

// TestOAuthPassThroughDovecot: Portico passes the client's token to a
// Dovecot whose oauth2 passdb asks the issuer (introspection), with
// python3 imaplib and curl as clients.
func TestOAuthPassThroughDovecot(t *testing.T) {
	e := newOAuthEnv(t, false)
	msg := message("oauth", []byte("Hello OAuth\r\n"))
	e.d.AddMessage(t, aliceUser, "INBOX", msg)
	good, bad := testsrv.OpaqueToken(), testsrv.OpaqueToken()
	e.is.SetOpaque(good, map[string]any{"active": true, "username": aliceUser})
	e.is.SetOpaque(bad, map[string]any{"active": false, "username": aliceUser})

	runImaplibOAuth(t, e, good, bad)
	runCurlOAuth(t, e, good, bad, msg)
	if n := e.is.Introspections(); n < 6 {
		t.Errorf("the issuer was asked %d times: Dovecot did not validate the tokens", n)
	}
	e.d.WaitLog(t, "oauth2", 5*time.Second)
	e.checkSecrets(t, good, bad)
}

// TestOAuthValidateDovecot: Portico validates JWTs and opaque tokens
// itself and logs in to Dovecot as the master user.
func TestOAuthValidateDovecot(t *testing.T) {
	e := newOAuthEnv(t, true)
	msg := message("oauth", []byte("Hello validated\r\n"))
	e.d.AddMessage(t, aliceUser, "INBOX", msg)
	claims := map[string]any{"aud": "imap.example.test", "email": aliceUser, "email_verified": true}
	good := e.is.Token(t, claims)
	expired := e.is.Token(t, map[string]any{"aud": "imap.example.test", "email": aliceUser, "exp": time.Now().Add(-time.Minute).Unix()})
	runImaplibOAuth(t, e, good, expired)

	wrongUser := e.is.Token(t, map[string]any{"aud": "imap.example.test", "email": "bob@example.test"})
	opaque := testsrv.OpaqueToken()
	e.is.SetOpaque(opaque, map[string]any{"active": true, "email": aliceUser, "aud": "imap.example.test"})
	for name, tok := range map[string]string{"jwt": good, "opaque": opaque} {
		t.Run(name, func(t *testing.T) { runCurlOAuth(t, e, tok, wrongUser, msg) })
	}
	// The issuer rotates its key (and drops the old one): the new key's
	// tokens validate, the key set being fetched again.
	e.is.Rotate(t)
	rotated := e.is.Token(t, claims)
	t.Run("rotated key", func(t *testing.T) { runCurlOAuth(t, e, rotated, wrongUser, msg) })
	// Dovecot saw the master user log in for alice, never a token.
	e.d.WaitLog(t, "master", 5*time.Second)
	if log := e.d.Log(); strings.Contains(log, good) || strings.Contains(log, opaque) {
		t.Error("a token reached the backend")
	}

	// The IdP down, and a token signed with a key not yet seen: the
	// client is told to try again later, not that its token is bad.
	e.is.Rotate(t)
	unseen := e.is.Token(t, claims)
	time.Sleep(200 * time.Millisecond) // the JWKS throttle's bucket refills
	e.is.SetDown(true)
	if got := e.authenticate(t, "XOAUTH2", "user="+aliceUser+"\x01auth=Bearer "+unseen+"\x01\x01"); !strings.HasPrefix(got, "a NO [UNAVAILABLE] ") {
		t.Errorf("with the IdP down: %q, want NO [UNAVAILABLE]", got)
	}
	e.is.SetDown(false)
	e.checkSecrets(t, good, expired, wrongUser, opaque, rotated, unseen)
}

// authenticate runs one AUTHENTICATE with an initial response over a
// fresh connection and returns the first reply line.
func (e *oauthEnv) authenticate(t *testing.T, mech, msg string) string {
	t.Helper()
	c, err := tls.Dial("tcp", e.imaps, &tls.Config{RootCAs: e.roots, ServerName: "localhost", NextProtos: []string{"imap"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "a AUTHENTICATE %s %s\r\n", mech, base64.StdEncoding.EncodeToString([]byte(msg)))
	l, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimRight(l, "\r\n")
}
