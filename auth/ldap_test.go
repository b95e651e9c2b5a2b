package auth

import (
	"context"
	"crypto/tls"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
	ptls "github.com/portico-mail/portico/tls"
)

var ldapUsers = map[string]string{
	"alice@example.test": `alice "pw" ünï`,
	"bob@example.test":   "bob-pw",
}

type verifyCase struct {
	user, pw string
	ok       bool
}

// ldapCases hold for every way of finding the DN.
var ldapCases = []verifyCase{
	{"alice@example.test", `alice "pw" ünï`, true},
	{"bob@example.test", "bob-pw", true},
	{"alice@example.test", "bob-pw", false},
	{"alice@example.test", "", false}, // no unauthenticated bind
	{"nobody@example.test", "bob-pw", false},
	// Injection attempts: escaped, so they name no one.
	{"bob,ou=people@example.test", "bob-pw", false},
	{"*@example.test", "bob-pw", false},
	{"bob)(uid=*@example.test", "bob-pw", false},
	{"alice@example.test", "alice \"pw\" ünï\x00", false},
}

func checkCases(t *testing.T, s Store, cases []verifyCase) {
	t.Helper()
	for _, tc := range cases {
		ok, err := s.Verify(context.Background(), tc.user, tc.pw)
		if ok != tc.ok || err != nil {
			t.Errorf("%q %q: %v, %v; want %v", tc.user, tc.pw, ok, err, tc.ok)
		}
		if err != nil && tc.pw != "" && strings.Contains(err.Error(), tc.pw) {
			t.Errorf("the password is in the error: %v", err)
		}
	}
}

func TestLDAPStore(t *testing.T) {
	baseline := runtime.NumGoroutine()
	d := testsrv.StartSlapd(t, testsrv.SlapdOptions{Users: ldapUsers, ServicePassword: "svc-pw",
		ExtraLDIF: "dn: uid=twin1,ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: twin1\ncn: t\nsn: t\nmail: twin@example.test\nuserPassword: x\n\n" +
			"dn: uid=twin2,ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: twin2\ncn: t\nsn: t\nmail: twin@example.test\nuserPassword: x\n\n"})

	t.Run("bind_dn", func(t *testing.T) {
		s := &LDAPStore{URL: d.URL, BindDN: "uid={local}," + d.People, PoolSize: 2}
		defer s.Close()
		checkCases(t, s, ldapCases)
	})
	t.Run("search as service", func(t *testing.T) {
		s := &LDAPStore{URL: d.URL, SearchBase: d.People, SearchFilter: "(mail={user})", ServiceDN: d.ServiceDN, ServicePassword: "svc-pw", PoolSize: 2}
		defer s.Close()
		checkCases(t, s, ldapCases)
		// Two entries for one address: an error, never a login.
		if ok, err := s.Verify(context.Background(), "twin@example.test", "x"); ok || err == nil {
			t.Errorf("ambiguous search: %v, %v", ok, err)
		}
		// A wrong service password is the operator's error, not the user's.
		bad := &LDAPStore{URL: d.URL, SearchBase: d.People, SearchFilter: "(mail={user})", ServiceDN: d.ServiceDN, ServicePassword: "wrong"}
		defer bad.Close()
		if ok, err := bad.Verify(context.Background(), "bob@example.test", "bob-pw"); ok || err == nil || !strings.Contains(err.Error(), "service bind") {
			t.Errorf("wrong service password: %v, %v", ok, err)
		}
	})
	t.Run("search without access", func(t *testing.T) {
		// Anonymous may not see the base here (slapd answers No Such
		// Object): the configuration is wrong, which is an error for
		// the operator's log (NO [UNAVAILABLE]), not a wrong password.
		s := &LDAPStore{URL: d.URL, SearchBase: d.People, SearchFilter: "(mail={user})"}
		defer s.Close()
		if ok, err := s.Verify(context.Background(), "bob@example.test", "bob-pw"); ok || err == nil {
			t.Errorf("search refused: %v, %v", ok, err)
		}
	})
	t.Run("search anonymously", func(t *testing.T) {
		anon := testsrv.StartSlapd(t, testsrv.SlapdOptions{Users: ldapUsers, Anonymous: true})
		s := &LDAPStore{URL: anon.URL, SearchBase: anon.People, SearchFilter: "(|(mail={user})(uid={local}))"}
		defer s.Close()
		checkCases(t, s, ldapCases)
	})

	t.Run("pool", func(t *testing.T) {
		s := &LDAPStore{URL: d.URL, BindDN: "uid={local}," + d.People, PoolSize: 3, IdleTimeout: 2 * time.Second}
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u, pw := "bob@example.test", "bob-pw"
				if i%2 == 1 {
					pw = "wrong"
				}
				ok, err := s.Verify(context.Background(), u, pw)
				if ok != (i%2 == 0) || err != nil {
					t.Errorf("%d: %v, %v", i, ok, err)
				}
			}()
		}
		wg.Wait()
		s.mu.Lock()
		n := len(s.idle)
		s.mu.Unlock()
		if n < 1 || n > 3 {
			t.Errorf("%d idle connections, want 1..3", n)
		}
		// Idle connections close by themselves.
		deadline := time.Now().Add(10 * time.Second)
		for ; n > 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			s.mu.Lock()
			n = len(s.idle)
			s.mu.Unlock()
		}
		if n != 0 {
			t.Errorf("%d idle connections after the idle timeout", n)
		}
	})

	t.Run("down", func(t *testing.T) {
		s := &LDAPStore{URL: d.URL, BindDN: "uid={local}," + d.People, Timeout: time.Second}
		defer s.Close()
		checkCases(t, s, ldapCases[:1]) // one pooled connection
		d.Stop()
		for range 2 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			ok, err := s.Verify(ctx, "bob@example.test", "bob-pw")
			cancel()
			if ok || err == nil {
				t.Errorf("directory down: %v, %v", ok, err)
			}
		}
	})

	// Every connection is closed: no goroutine of go-ldap is left.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines left, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}

func TestLDAPStartTLS(t *testing.T) {
	dir := t.TempDir()
	cert, certFile, keyFile := testcert.Files(t, dir, "localhost", "127.0.0.1")
	d := testsrv.StartSlapd(t, testsrv.SlapdOptions{Users: ldapUsers, CertFile: certFile, KeyFile: keyFile})
	s := &LDAPStore{URL: d.URL, StartTLS: true, BindDN: "uid={local}," + d.People,
		TLSConfig: &tls.Config{RootCAs: ptls.CertPool(cert), ServerName: "localhost", MinVersion: tls.VersionTLS12}}
	defer s.Close()
	checkCases(t, s, ldapCases[:3])
	// A certificate the client does not trust: an error, no bind.
	untrusting := &LDAPStore{URL: d.URL, StartTLS: true, BindDN: "uid={local}," + d.People,
		TLSConfig: &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS12}}
	defer untrusting.Close()
	if ok, err := untrusting.Verify(context.Background(), "bob@example.test", "bob-pw"); ok || err == nil || !strings.Contains(err.Error(), "starttls") {
		t.Errorf("untrusted certificate: %v, %v", ok, err)
	}
}
