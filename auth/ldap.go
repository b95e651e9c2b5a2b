package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// LDAPStore checks passwords by binding to an LDAP directory as the user
// (github.com/go-ldap/ldap/v3). The user's DN comes from a template
// (BindDN) or from a search (SearchBase and SearchFilter, as ServiceDN or
// anonymously). Connections are kept in a small pool; an idle one is
// closed after IdleTimeout, so a store that is no longer used (after a
// reload) lets go of its connections by itself.
type LDAPStore struct {
	// URL is ldap://host:port or ldaps://host:port.
	URL string
	// StartTLS upgrades ldap:// connections before the first bind.
	StartTLS  bool
	TLSConfig *tls.Config
	// BindDN is the DN template: {user}, {local} and {domain} are
	// replaced, escaped for a DN.
	BindDN string
	// SearchBase, SearchFilter ({user}, {local}, {domain} escaped for a
	// filter), ServiceDN and ServicePassword find the DN instead.
	SearchBase, SearchFilter   string
	ServiceDN, ServicePassword string
	// Timeout bounds connecting and each operation; default 5s.
	Timeout time.Duration
	// PoolSize bounds the connections, in use or idle; default 8. Logins
	// beyond it wait for one (within their context).
	PoolSize int
	// IdleTimeout closes connections unused this long; default 1m.
	IdleTimeout time.Duration

	once   sync.Once
	slots  chan struct{} // one per connection in use
	mu     sync.Mutex
	idle   []*idleConn
	closed bool
}

type idleConn struct {
	c     *ldap.Conn
	timer *time.Timer
}

// Verify implements Store. A wrong password, an unknown user and an
// empty password are false; a directory that cannot be reached or
// answers with anything but a bind result is an error.
func (s *LDAPStore) Verify(ctx context.Context, user, password string) (bool, error) {
	// An empty password would be an unauthenticated bind, which
	// succeeds as anonymous on many servers (RFC 4513 5.1.2).
	if password == "" || len(password) > MaxPasswordLength || strings.ContainsRune(password, 0) {
		return false, nil
	}
	for attempt := 0; ; attempt++ {
		c, reused, err := s.get(ctx)
		if err != nil {
			return false, err
		}
		ok, err := s.verifyOn(ctx, c, user, password)
		s.put(c, err == nil)
		// A pooled connection the server has closed meanwhile fails at
		// once: one retry on a fresh connection.
		if err != nil && reused && attempt == 0 && ldap.IsErrorWithCode(err, ldap.ErrorNetwork) {
			continue
		}
		return ok, err
	}
}

func (s *LDAPStore) verifyOn(ctx context.Context, c *ldap.Conn, user, password string) (bool, error) {
	timeout := s.timeout()
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if timeout <= 0 {
		return false, fmt.Errorf("auth: ldap: %w", context.DeadlineExceeded)
	}
	c.SetTimeout(timeout)
	dn := ""
	if s.BindDN != "" {
		dn = expand(s.BindDN, user, ldap.EscapeDN)
	} else {
		var err error
		if dn, err = s.search(c, user, timeout); err != nil {
			return false, err
		}
		if dn == "" {
			// Unknown user: a bind all the same, so that the answer
			// costs the directory and the client what a wrong password
			// costs.
			s.bind(c, "cn=portico-unknown-user,"+s.SearchBase, password)
			return false, nil
		}
	}
	return s.bind(c, dn, password)
}

// bind reports whether password is dn's.
func (s *LDAPStore) bind(c *ldap.Conn, dn, password string) (bool, error) {
	err := c.Bind(dn, password)
	switch {
	case err == nil:
		return true, nil
	case ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials),
		ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject),
		ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidDNSyntax),
		ldap.IsErrorWithCode(err, ldap.LDAPResultInappropriateAuthentication):
		return false, nil
	}
	return false, fmt.Errorf("auth: ldap bind %q: %w", dn, err)
}

// search returns the DN of user's entry, "" when there is none.
func (s *LDAPStore) search(c *ldap.Conn, user string, timeout time.Duration) (string, error) {
	var err error
	if s.ServiceDN != "" {
		err = c.Bind(s.ServiceDN, s.ServicePassword)
	} else {
		// A pooled connection may still be bound as the last user.
		err = c.UnauthenticatedBind("")
	}
	if err != nil {
		return "", fmt.Errorf("auth: ldap service bind %q: %w", s.ServiceDN, err)
	}
	filter := expand(s.SearchFilter, user, ldap.EscapeFilter)
	req := ldap.NewSearchRequest(s.SearchBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, max(int(timeout/time.Second), 1), false, filter, []string{"1.1"}, nil)
	res, err := c.Search(req)
	if res == nil || (err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded)) {
		return "", fmt.Errorf("auth: ldap search %q in %q: %w", filter, s.SearchBase, err)
	}
	switch n := len(res.Entries); {
	case n == 0:
		return "", nil
	case n > 1:
		// Binding as either could let one user in with another's
		// password: the filter is wrong, not the password.
		return "", fmt.Errorf("auth: ldap search %q in %q: more than one entry", filter, s.SearchBase)
	}
	return res.Entries[0].DN, nil
}

// expand replaces {user}, {local} and {domain} in tmpl, escaped by esc.
func expand(tmpl, user string, esc func(string) string) string {
	local, domain, _ := strings.Cut(user, "@")
	return strings.NewReplacer("{user}", esc(user), "{local}", esc(local), "{domain}", esc(domain)).Replace(tmpl)
}

func (s *LDAPStore) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return 5 * time.Second
}

// get returns an idle connection, or a new one when there is none.
func (s *LDAPStore) get(ctx context.Context) (c *ldap.Conn, reused bool, err error) {
	s.once.Do(func() {
		n := s.PoolSize
		if n <= 0 {
			n = 8
		}
		s.slots = make(chan struct{}, n)
	})
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("auth: ldap: waiting for a connection: %w", ctx.Err())
	}
	s.mu.Lock()
	for len(s.idle) > 0 {
		ic := s.idle[len(s.idle)-1]
		s.idle = s.idle[:len(s.idle)-1]
		if ic.timer.Stop() && !ic.c.IsClosing() {
			s.mu.Unlock()
			return ic.c, true, nil
		}
		// Its idle timer fired: it is being closed.
	}
	s.mu.Unlock()
	c, err = s.dial(ctx)
	if err != nil {
		<-s.slots
		return nil, false, err
	}
	return c, false, nil
}

func (s *LDAPStore) dial(ctx context.Context) (*ldap.Conn, error) {
	d := &net.Dialer{Timeout: s.timeout()}
	if dl, ok := ctx.Deadline(); ok {
		d.Deadline = dl
	}
	tc := s.tlsConfig()
	opts := []ldap.DialOpt{ldap.DialWithDialer(d), ldap.DialWithTLSConfig(tc)}
	c, err := ldap.DialURL(s.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("auth: ldap connect %s: %w", s.URL, err)
	}
	c.SetTimeout(s.timeout())
	if s.StartTLS {
		if err := c.StartTLS(tc); err != nil {
			c.Close()
			return nil, fmt.Errorf("auth: ldap starttls %s: %w", s.URL, err)
		}
	}
	return c, nil
}

// tlsConfig is TLSConfig, or the defaults, with the URL's host as the
// name to verify when it names none.
func (s *LDAPStore) tlsConfig() *tls.Config {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.TLSConfig != nil {
		tc = s.TLSConfig.Clone()
	}
	if tc.ServerName == "" {
		if u, err := url.Parse(s.URL); err == nil {
			tc.ServerName = u.Hostname()
		}
	}
	return tc
}

// put gives a connection back: to the idle list when it is healthy,
// closed otherwise.
func (s *LDAPStore) put(c *ldap.Conn, healthy bool) {
	defer func() { <-s.slots }()
	s.mu.Lock()
	if !healthy || s.closed || c.IsClosing() {
		s.mu.Unlock()
		c.Close()
		return
	}
	ic := &idleConn{c: c}
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = time.Minute
	}
	ic.timer = time.AfterFunc(idle, func() {
		s.mu.Lock()
		for i, x := range s.idle {
			if x == ic {
				s.idle = append(s.idle[:i], s.idle[i+1:]...)
				break
			}
		}
		s.mu.Unlock()
		c.Close()
	})
	s.idle = append(s.idle, ic)
	s.mu.Unlock()
}

// Close closes the idle connections; connections in use are closed when
// they are given back.
func (s *LDAPStore) Close() error {
	s.mu.Lock()
	s.closed = true
	idle := s.idle
	s.idle = nil
	s.mu.Unlock()
	var errs []error
	for _, ic := range idle {
		if ic.timer.Stop() {
			errs = append(errs, ic.c.Close())
		}
	}
	return errors.Join(errs...)
}
