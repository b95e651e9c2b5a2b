package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portico-mail/portico/config"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	"github.com/portico-mail/portico/proxy"
	"github.com/portico-mail/portico/proxy/upstream"
	"github.com/portico-mail/portico/routing"
)

// Proxy-side authentication: users whose password hashes are in Redis,
// next to their routes, behind a Dovecot that does not know their
// passwords and lets Portico in as a master user.

const (
	authMaster   = "portico-master"
	authMasterPW = "m4ster-Secret-pw"
)

// authUser is a user of the auth tests, with the Dovecot scheme its hash
// is made with (by doveadm pw itself).
type authUser struct {
	name, pw, scheme string
	args             []string
	hash             string
}

func authUsers() []*authUser {
	return []*authUser{
		{name: "alice@example.test", pw: `alice "pw" ünï`, scheme: "SHA512-CRYPT"},
		{name: "bob@example.test", pw: "bob-pw-argon", scheme: "ARGON2ID"},
		{name: "carol@example.test", pw: "carol-pw-blf", scheme: "BLF-CRYPT", args: []string{"-r", "6"}},
		{name: "dave@example.test", pw: "dave-pw-sha256", scheme: "SHA256-CRYPT", args: []string{"-r", "6000"}},
	}
}

func doveadmPW(t *testing.T, scheme, pw string, args ...string) string {
	t.Helper()
	out, err := exec.Command(mustLookPath(t, "doveadm"), append([]string{"pw", "-s", scheme, "-p", pw}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("doveadm pw -s %s: %v: %s", scheme, err, out)
	}
	return strings.TrimSpace(string(out))
}

// authEnv is a Portico built from a config by internal/app, as the
// binary does, with auth.passwords redis and a master user.
type authEnv struct {
	redis    *testsrv.Redis
	rdb      redis.UniversalClient
	dovecot  *testsrv.Dovecot
	slapd    *testsrv.Slapd // with passwords in LDAP
	addr     string         // imap, cleartext logins from loopback
	pop3     string         // pop3, cleartext logins from loopback
	logs     *testsrv.Buffer
	users    []*authUser
	backends atomic.Int64 // backend logins Portico attempted
}

func newAuthEnv(t *testing.T, limitsYAML string) *authEnv {
	return newAuthEnvFrom(t, limitsYAML, "redis")
}

// newAuthEnvFrom is newAuthEnv with the passwords in source: "redis"
// (hashes next to the routes) or "ldap" (a slapd holding the users).
func newAuthEnvFrom(t *testing.T, limitsYAML, source string) *authEnv {
	t.Helper()
	e := &authEnv{logs: &testsrv.Buffer{}, users: authUsers()}
	e.redis = testsrv.StartRedis(t)
	var names []string
	for _, u := range e.users {
		names = append(names, u.name)
		u.hash = doveadmPW(t, u.scheme, u.pw, u.args...)
	}
	// Dovecot knows the users (random passwords) and the master user.
	e.dovecot = testsrv.StartDovecot(t, testsrv.DovecotOptions{
		MasterOnlyUsers: names, MasterUser: authMaster, MasterPassword: authMasterPW, POP3: true,
	})
	_, pop3Port, err := net.SplitHostPort(e.dovecot.POP3Addr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, certFile, keyFile := testcert.Files(t, dir, "localhost", "127.0.0.1")
	masterFile := writeTemp(t, "master", authMasterPW+"\n")
	sourceYAML := ""
	if source == "ldap" {
		users := map[string]string{}
		for _, u := range e.users {
			users[u.name] = u.pw
		}
		e.slapd = testsrv.StartSlapd(t, testsrv.SlapdOptions{Users: users, ServicePassword: "svc-pw"})
		svcFile := writeTemp(t, "svc", "svc-pw\n")
		sourceYAML = `  ldap:
    url: ` + e.slapd.URL + `
    search_base: "` + e.slapd.People + `"
    service_dn: "` + e.slapd.ServiceDN + `"
    service_password: {file: ` + svcFile + `}
    timeout: 1s
`
	}
	cfg, err := config.Parse([]byte(`
listeners:
  - {mode: imap, address: "127.0.0.1:0", cleartext_login_networks: [127.0.0.0/8]}
  - {mode: pop3, address: "127.0.0.1:0", cleartext_login_networks: [127.0.0.0/8]}
tls:
  certificates:
    - {cert_file: `+certFile+`, key_file: `+keyFile+`}
limits:
  auth_failure_delay: 200ms
`+limitsYAML+`
routing:
  redis: {addrs: ["`+e.redis.Addr+`"]}
  health: {disabled: true}
backends:
  - {name: dovecot, address: "`+e.dovecot.Addr+`", pop3_port: `+pop3Port+`, forward_id: true}
auth:
  passwords: `+source+`
  master_user: `+authMaster+`
  master_password: {file: `+masterFile+`}
`+sourceYAML), "portico.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Nothing secret in Portico's log at debug level: no password, no
		// hash (nor its salt and digest), no master password. Dovecot never
		// saw the users' passwords at all.
		logs, dlog := e.logs.String(), e.dovecot.Log()
		for _, u := range e.users {
			secrets := []string{u.pw}
			if i := strings.LastIndexByte(u.hash, '$'); i > 8 {
				secrets = append(secrets, u.hash, u.hash[i+1:], u.hash[i-8:i])
			}
			for _, s := range secrets {
				if strings.Contains(logs, s) {
					t.Errorf("a secret of %s reached Portico's log: %q", u.name, s)
				}
			}
			if strings.Contains(dlog, u.pw) {
				t.Errorf("%s's password reached Dovecot", u.name)
			}
		}
		if strings.Contains(logs, authMasterPW) {
			t.Error("the master password reached Portico's log")
		}
	})
	logger := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rt, addrs := startApp(t, cfg, logger, func(srv *proxy.Server) {
		next, nextPOP3 := srv.Login, srv.LoginPOP3
		srv.Login = func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
			e.backends.Add(1)
			return next(ctx, b, cred, id)
		}
		srv.LoginPOP3 = func(ctx context.Context, b *routing.Backend, cred upstream.Credentials, id *upstream.IDInfo) (*upstream.Result, error) {
			e.backends.Add(1)
			return nextPOP3(ctx, b, cred, id)
		}
	})
	e.addr, e.pop3 = addrs[0], addrs[1]
	e.rdb = rt.Redis
	ctx := context.Background()
	for _, u := range e.users {
		fields := []any{"backend", "dovecot"}
		if source == "redis" {
			fields = append(fields, "password", u.hash)
		}
		if err := e.rdb.HSet(ctx, "portico:route:"+u.name, fields...).Err(); err != nil {
			t.Fatal(err)
		}
		e.dovecot.AddMessage(t, u.name, "INBOX", message("mailbox of "+u.name, []byte("hello "+u.name)))
	}
	return e
}

func (e *authEnv) hgetalls(t *testing.T) int {
	t.Helper()
	info, err := e.rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`cmdstat_hgetall:calls=(\d+)`).FindStringSubmatch(info)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// authenticatePlain sends AUTHENTICATE PLAIN with an initial response.
func (c *limitsConn) authenticatePlain(authz, user, pass string) (string, error) {
	c.n++
	tag := fmt.Sprintf("p%d", c.n)
	ir := base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
	if _, err := fmt.Fprintf(c.conn, "%s AUTHENTICATE PLAIN %s\r\n", tag, ir); err != nil {
		return "", err
	}
	return c.until(tag)
}

// command sends one command and returns its untagged lines and tagged reply.
func (c *limitsConn) command(line string) (string, error) {
	c.n++
	tag := fmt.Sprintf("c%d", c.n)
	if _, err := fmt.Fprintf(c.conn, "%s %s\r\n", tag, line); err != nil {
		return "", err
	}
	return c.until(tag)
}

// until reads up to tag's reply and returns everything read, the reply last.
func (c *limitsConn) until(tag string) (string, error) {
	var b strings.Builder
	for {
		l, err := c.br.ReadString('\n')
		b.WriteString(l)
		if err != nil {
			return b.String(), err
		}
		if strings.HasPrefix(l, tag+" ") {
			return b.String(), nil
		}
	}
}

// TestProxyAuthMasterUser: each user logs in with the password whose hash
// doveadm made (four schemes), Portico logs in to Dovecot as the master
// user, and the user is in their own mailbox. Wrong passwords, unknown
// users and users without a hash get the same answer after the same delay,
// and Dovecot hears of none of them.
func TestProxyAuthMasterUser(t *testing.T) {
	e := newAuthEnv(t, "")
	for i, u := range e.users {
		c, err := dialFrom(e.addr, "127.0.0.2")
		if err != nil {
			t.Fatal(err)
		}
		var reply string
		if i%2 == 0 {
			reply, _, err = c.login(u.name, u.pw)
		} else {
			reply, err = c.authenticatePlain("", u.name, u.pw)
		}
		if err != nil || !strings.Contains(reply, "OK") {
			t.Fatalf("%s (%s): %q, %v", u.name, u.scheme, reply, err)
		}
		out, err := c.command("SELECT INBOX")
		if err != nil || !strings.Contains(out, "* 1 EXISTS") {
			t.Fatalf("%s: SELECT: %q, %v", u.name, out, err)
		}
		out, err = c.command("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
		if err != nil || !strings.Contains(out, "Subject: mailbox of "+u.name) {
			t.Fatalf("%s is not in their own mailbox: %q, %v", u.name, out, err)
		}
		c.close()
	}
	// Dovecot logged the user in (it knows no password of theirs: only
	// the master user's PLAIN with the user as authzid can do that).
	e.dovecot.WaitLog(t, "Login: user=<"+e.users[0].name+">, method=PLAIN", 5*time.Second)

	// One Redis read of the route hash per login: the password check's
	// HGETALL fills the route cache that the route lookup then uses.
	before := e.hgetalls(t)
	c, err := dialFrom(e.addr, "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	if reply, _, err := c.login(e.users[3].name, e.users[3].pw); err != nil || !strings.HasPrefix(reply, "OK") {
		t.Fatalf("login: %q, %v", reply, err)
	}
	c.close()
	if n := e.hgetalls(t) - before; n != 1 {
		t.Errorf("%d HGETALLs for one login, want 1", n)
	}

	// Failures: all alike, none reaching Dovecot.
	e.rdb.HSet(context.Background(), "portico:route:nohash@example.test", "backend", "dovecot")
	backends := e.backends.Load()
	var replies []string
	for _, tc := range [][2]string{
		{e.users[0].name, "wrong"},
		{e.users[1].name, e.users[0].pw},
		{"nobody@example.test", e.users[0].pw},
		{"nohash@example.test", ""},
		{"nohash@example.test", "x"},
		{e.users[0].name, e.users[0].pw + " "},
	} {
		c, err := dialFrom(e.addr, "127.0.0.5")
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		reply, _, err := c.login(tc[0], tc[1])
		d := time.Since(t0)
		c.close()
		if err != nil || !strings.HasPrefix(reply, "NO [AUTHENTICATIONFAILED]") {
			t.Errorf("%s: %q, %v", tc[0], reply, err)
		}
		if d < 200*time.Millisecond || d > 2*time.Second {
			t.Errorf("%s: answered after %v, want about auth_failure_delay (200ms)", tc[0], d)
		}
		replies = append(replies, reply)
	}
	for _, r := range replies[1:] {
		if r != replies[0] {
			t.Errorf("answers differ: %q and %q", replies[0], r)
		}
	}
	if n := e.backends.Load() - backends; n != 0 {
		t.Errorf("%d failed logins reached Dovecot", n)
	}

	// A client's own authzid is not for it to choose: PLAIN naming
	// another user is refused before anything is checked.
	c, err = dialFrom(e.addr, "127.0.0.6")
	if err != nil {
		t.Fatal(err)
	}
	if reply, err := c.authenticatePlain(e.users[1].name, e.users[0].name, e.users[0].pw); err != nil || strings.Contains(reply, " OK ") {
		t.Errorf("PLAIN with another user as authzid: %q, %v", reply, err)
	}
	c.close()
}

// TestProxyAuthBruteForce: with auth.passwords set, wrong passwords are
// counted by the brute-force limiter like any others, and once the user
// is blocked from an address even the right password is refused there,
// without Redis' hash or Dovecot being asked.
func TestProxyAuthBruteForce(t *testing.T) {
	e := newAuthEnv(t, `  brute_force:
    user_ip: {delay_after: 2, block_after: 3, window: 15m, block_for: 15m}
    delay: 10ms
    max_delay: 20ms
`)
	u := e.users[0]
	for i := range 3 {
		c, err := dialFrom(e.addr, "127.0.0.7")
		if err != nil {
			t.Fatal(err)
		}
		reply, _, err := c.login(u.name, fmt.Sprintf("wrong-%d", i))
		c.close()
		if err != nil || !strings.HasPrefix(reply, "NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("attempt %d: %q, %v", i, reply, err)
		}
	}
	backends := e.backends.Load()
	c, err := dialFrom(e.addr, "127.0.0.7")
	if err != nil {
		t.Fatal(err)
	}
	reply, _, err := c.login(u.name, u.pw)
	c.close()
	if err != nil || !strings.HasPrefix(reply, "NO [AUTHENTICATIONFAILED]") {
		t.Fatalf("right password while blocked: %q, %v", reply, err)
	}
	if e.backends.Load() != backends {
		t.Error("a blocked login reached Dovecot")
	}
	if !strings.Contains(e.logs.String(), "limit") {
		t.Errorf("no limiter line in the log")
	}
	// From another address the user is not blocked.
	c, err = dialFrom(e.addr, "127.0.0.8")
	if err != nil {
		t.Fatal(err)
	}
	reply, _, err = c.login(u.name, u.pw)
	c.close()
	if err != nil || !strings.HasPrefix(reply, "OK") {
		t.Fatalf("from another address: %q, %v", reply, err)
	}
}

// TestProxyAuthLDAP: the same users, their passwords in a real slapd
// (found by a search as a service account, then a bind as the user):
// they land in their own mailboxes through the master user; wrong
// passwords and unknown users get one answer; a directory that is down
// gives NO [UNAVAILABLE].
func TestProxyAuthLDAP(t *testing.T) {
	e := newAuthEnvFrom(t, "  brute_force: {disabled: true}\n", "ldap")
	for _, u := range e.users {
		c, err := dialFrom(e.addr, "127.0.0.2")
		if err != nil {
			t.Fatal(err)
		}
		reply, _, err := c.login(u.name, u.pw)
		if err != nil || !strings.HasPrefix(reply, "OK") {
			t.Fatalf("%s: %q, %v", u.name, reply, err)
		}
		if _, err := c.command("SELECT INBOX"); err != nil {
			t.Fatal(err)
		}
		out, err := c.command("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
		if err != nil || !strings.Contains(out, "Subject: mailbox of "+u.name) {
			t.Fatalf("%s is not in their own mailbox: %q, %v", u.name, out, err)
		}
		c.close()
	}
	backends := e.backends.Load()
	var replies []string
	for _, tc := range [][2]string{
		{e.users[0].name, "wrong"},
		{"nobody@example.test", e.users[0].pw},
		{e.users[0].name, ""},
		{"*@example.test", e.users[0].pw},
	} {
		c, err := dialFrom(e.addr, "127.0.0.5")
		if err != nil {
			t.Fatal(err)
		}
		reply, _, err := c.login(tc[0], tc[1])
		c.close()
		if err != nil || !strings.HasPrefix(reply, "NO [AUTHENTICATIONFAILED]") {
			t.Errorf("%s: %q, %v", tc[0], reply, err)
		}
		replies = append(replies, reply)
	}
	for _, r := range replies[1:] {
		if r != replies[0] {
			t.Errorf("answers differ: %q and %q", replies[0], r)
		}
	}
	if n := e.backends.Load() - backends; n != 0 {
		t.Errorf("%d failed logins reached Dovecot", n)
	}
	e.slapd.Stop()
	c, err := dialFrom(e.addr, "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if reply, _, err := c.login(e.users[1].name, e.users[1].pw); err != nil || !strings.HasPrefix(reply, "NO [UNAVAILABLE]") {
		t.Fatalf("directory down: %q, %v", reply, err)
	}
}

// TestProxyAuthRedisDown: without Redis the password cannot be checked:
// NO [UNAVAILABLE], never the answer of a wrong password.
func TestProxyAuthRedisDown(t *testing.T) {
	e := newAuthEnv(t, "  brute_force: {disabled: true}\n")
	e.redis.Stop()
	c, err := dialFrom(e.addr, "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	reply, _, err := c.login(e.users[0].name, e.users[0].pw)
	if err != nil || !strings.HasPrefix(reply, "NO [UNAVAILABLE]") {
		t.Fatalf("%q, %v", reply, err)
	}
}
