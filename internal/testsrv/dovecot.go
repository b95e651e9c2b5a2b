package testsrv

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// MailUID and MailGID own every mailbox: the static userdb maps all users to
// nobody/nogroup, which exist on every Debian machine.
const (
	MailUID = 65534
	MailGID = 65534
)

// DovecotOptions configures StartDovecot. The zero value starts a Dovecot
// without users that trusts 127.0.0.1/32.
type DovecotOptions struct {
	// Users maps user names to plaintext passwords.
	Users map[string]string

	// MasterUser and MasterPassword, if set, add a master passdb, so that
	// PLAIN with authzid=user, authcid=MasterUser (or LOGIN "user*master")
	// logs in as any user.
	MasterUser     string
	MasterPassword string
	// MasterOnlyUsers exist (in the users passdb, with a home) but with a
	// random password nobody knows: only the master user logs in as them,
	// as when a proxy checks passwords and backends do not hold them.
	MasterOnlyUsers []string

	// TrustedNetworks becomes login_trusted_networks: clients from there may
	// forward the real client IP with ID x-originating-ip. nil means
	// 127.0.0.1/32; a non-nil empty slice trusts nobody, to test that
	// Dovecot ignores forwarded IPs. The HAProxy listener always trusts
	// 127.0.0.1/32, or it would reject every connection.
	TrustedNetworks []string

	// OAuth2IntrospectionURL, if set, adds the XOAUTH2 and OAUTHBEARER
	// mechanisms with an oauth2 passdb that validates tokens by POSTing
	// them (token=...) to this URL (Issuer.HTTPURL): an answer with
	// "active": true and "username" equal to the login's user accepts.
	// The users' passwords then serve PLAIN and LOGIN only.
	OAuth2IntrospectionURL string

	// POP3 adds Dovecot's POP3 service: a plain listener (Dovecot.POP3Addr)
	// and one that requires a PROXY protocol header
	// (Dovecot.POP3HAProxyAddr), both trusting the same networks as IMAP.
	POP3 bool

	// Extra is appended to the generated configuration; later settings win,
	// so it can override the defaults (e.g. "auth_failure_delay = 2s").
	Extra string
}

// Dovecot is a dovecot process tree owned by a test.
type Dovecot struct {
	Addr        string // plain IMAP listener, 127.0.0.1:port
	HAProxyAddr string // listener that requires a PROXY protocol header
	// POP3Addr and POP3HAProxyAddr are the POP3 listeners, plain and with
	// a PROXY header, when DovecotOptions.POP3 is set; "" otherwise.
	POP3Addr        string
	POP3HAProxyAddr string
	LogPath         string
	Dir             string // scratch directory holding config, sockets and homes

	t        testing.TB
	cmd      *exec.Cmd
	exited   chan struct{} // closed when the master process has been reaped
	stopOnce sync.Once
}

var msgSeq atomic.Uint64

// StartDovecot starts dovecot in the foreground on random loopback ports
// (two for IMAP, two more for POP3)
// and stops it, with every child, in t.Cleanup. It must run as root, as CI
// does: dovecot switches to the dovecot, dovenull and nobody users itself.
func StartDovecot(t testing.TB, opts DovecotOptions) *Dovecot {
	t.Helper()
	bin := LookPath(t, "dovecot", "/usr/sbin/dovecot")
	if os.Geteuid() != 0 {
		t.Fatalf("testsrv: dovecot must be started as root (it drops to uid %d itself); run the tests as root, as CI does", MailUID)
	}
	for u, pw := range opts.Users {
		checkPasswdField(t, "user name", u)
		checkPasswdField(t, "password of "+u, pw)
	}
	if opts.MasterUser != "" {
		checkPasswdField(t, "master user name", opts.MasterUser)
		checkPasswdField(t, "master password", opts.MasterPassword)
	}

	dir := scratchDir(t)
	t.Cleanup(func() { os.RemoveAll(dir) }) // registered first, so it runs after Stop
	for _, sub := range []string{"run", "state", "home"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatalf("testsrv: %v", err)
		}
	}
	var users bytes.Buffer
	for u, pw := range opts.Users {
		fmt.Fprintf(&users, "%s:{PLAIN}%s\n", u, pw)
		mkdirMail(t, filepath.Join(dir, "home", u))
	}
	for _, u := range opts.MasterOnlyUsers {
		checkPasswdField(t, "user name", u)
		fmt.Fprintf(&users, "%s:{PLAIN}%s\n", u, randomHex(16))
		mkdirMail(t, filepath.Join(dir, "home", u))
	}
	// The auth process runs as the dovecot user, hence world-readable files;
	// they only hold throw-away test passwords.
	writeFile(t, filepath.Join(dir, "users"), users.Bytes(), 0o644)
	if opts.OAuth2IntrospectionURL != "" {
		if strings.ContainsAny(opts.OAuth2IntrospectionURL, " \n\r") {
			t.Fatalf("testsrv: bad introspection URL %q", opts.OAuth2IntrospectionURL)
		}
		writeFile(t, filepath.Join(dir, "oauth2.conf.ext"), []byte(fmt.Sprintf(`introspection_mode = post
introspection_url = %s
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
`, opts.OAuth2IntrospectionURL)), 0o644)
	}
	if opts.MasterUser != "" {
		writeFile(t, filepath.Join(dir, "masters"),
			[]byte(fmt.Sprintf("%s:{PLAIN}%s\n", opts.MasterUser, opts.MasterPassword)), 0o644)
	}

	d := &Dovecot{Dir: dir, LogPath: filepath.Join(dir, "dovecot.log"), t: t}
	// FreePort can race with other tests grabbing the port; a bind failure
	// is retried with new ports instead of failing the test.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, hport := FreePort(t), FreePort(t)
		d.Addr = fmt.Sprintf("127.0.0.1:%d", port)
		d.HAProxyAddr = fmt.Sprintf("127.0.0.1:%d", hport)
		var pop3Ports [2]int
		if opts.POP3 {
			pop3Ports = [2]int{FreePort(t), FreePort(t)}
			d.POP3Addr = fmt.Sprintf("127.0.0.1:%d", pop3Ports[0])
			d.POP3HAProxyAddr = fmt.Sprintf("127.0.0.1:%d", pop3Ports[1])
		}
		conf := filepath.Join(dir, "dovecot.conf")
		writeFile(t, conf, []byte(dovecotConfig(dir, port, hport, pop3Ports, opts)), 0o644)
		os.Remove(d.LogPath)
		lastErr = d.start(bin, conf)
		if lastErr == nil {
			t.Cleanup(d.Stop)
			return d
		}
		d.Stop()
		d.cmd, d.stopOnce = nil, sync.Once{}
		if !strings.Contains(lastErr.Error(), "Address already in use") {
			break
		}
	}
	t.Fatalf("testsrv: dovecot did not start: %v", lastErr)
	return nil
}

func (d *Dovecot) start(bin, conf string) error {
	stderr, err := os.Create(filepath.Join(d.Dir, "stderr.log"))
	if err != nil {
		return err
	}
	defer stderr.Close() // the child holds its own copy
	cmd := exec.Command(bin, "-F", "-c", conf)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	// Setpgid lets Stop signal the whole tree (imap, auth, log, ...), which
	// would otherwise outlive the master. Pdeathsig covers a crashing test
	// binary; the children then exit on their own once the master is gone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	d.cmd = cmd
	d.exited = make(chan struct{})
	go func() { cmd.Wait(); close(d.exited) }()

	if err := d.waitReady(15 * time.Second); err != nil {
		out, _ := os.ReadFile(filepath.Join(d.Dir, "stderr.log"))
		return fmt.Errorf("%w\nstderr:\n%s\nlog:\n%s", err, out, d.Log())
	}
	return nil
}

// waitReady waits for a real greeting: imap-login may accept a connection
// and first say "Waiting for authentication process to respond" while auth
// is still starting, and logins fail until auth is up.
func (d *Dovecot) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			return fmt.Errorf("dovecot exited early: %v", d.cmd.ProcessState)
		default:
		}
		if err = greeting(d.Addr, deadline); err == nil && d.POP3Addr != "" {
			err = pop3Greeting(d.POP3Addr, deadline)
		}
		if err == nil {
			if err = WaitDial(d.HAProxyAddr, time.Until(deadline)); err == nil && d.POP3HAProxyAddr != "" {
				err = WaitDial(d.POP3HAProxyAddr, time.Until(deadline))
			}
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no IMAP or POP3 greeting on %s: %v", d.Addr, err)
}

// pop3Greeting waits for pop3-login's "+OK" greeting, which it sends only
// once its auth process is connected.
func pop3Greeting(addr string, deadline time.Time) error {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+OK") {
		return fmt.Errorf("unexpected POP3 greeting %q", line)
	}
	fmt.Fprintf(c, "QUIT\r\n")
	return nil
}

func greeting(addr string, deadline time.Time) error {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, "* OK") {
			return fmt.Errorf("unexpected greeting %q", line)
		}
		if !strings.Contains(line, "Waiting for authentication") {
			fmt.Fprintf(c, "r LOGOUT\r\n")
			return nil
		}
	}
}

// Stop terminates dovecot and all its children. It is safe to call more
// than once, so a test can take the backend down on purpose.
func (d *Dovecot) Stop() {
	d.stopOnce.Do(func() {
		if d.cmd == nil || d.cmd.Process == nil {
			return
		}
		pgid := d.cmd.Process.Pid
		// A graceful stop takes 1-3 s because the master waits for its
		// children; nothing on disk is worth that beyond a short grace.
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(3 * time.Second):
		}
		// Logged-in imap processes keep running after the master died as
		// long as their client is connected, so always kill the group.
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-d.exited
		deadline := time.Now().Add(5 * time.Second)
		for len(groupProcesses(pgid)) > 0 {
			if time.Now().After(deadline) {
				d.t.Errorf("testsrv: dovecot processes survived SIGKILL: %v", groupProcesses(pgid))
				return
			}
			syscall.Kill(-pgid, syscall.SIGKILL)
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// groupProcesses lists the live (non-zombie) processes of a process group.
// Zombies are skipped: an init that does not reap orphans (common in
// containers) leaves them behind, and they hold no ports or files.
func groupProcesses(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after "(comm)": state ppid pgrp ...; comm may hold spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Log returns the whole dovecot log so far.
func (d *Dovecot) Log() string {
	b, _ := os.ReadFile(d.LogPath)
	return string(b)
}

// WaitLog waits until a log line contains substr and returns that line. It
// fails the test after timeout, printing the log.
func (d *Dovecot) WaitLog(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		log := d.Log()
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, substr) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("testsrv: dovecot log has no %q after %v:\n%s", substr, timeout, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// AddMessage delivers rfc822 into a mailbox of user by writing the maildir
// directly, which is much faster than APPEND for big messages. mailbox is
// "INBOX" or a top-level folder name, created if missing. Dovecot notices
// the file on the next SELECT, NOOP or IDLE wake-up.
func (d *Dovecot) AddMessage(t testing.TB, user, mailbox string, rfc822 []byte) {
	t.Helper()
	if user == "" || strings.ContainsAny(user, "/\x00") || mailbox == "" || strings.ContainsAny(mailbox, "/.\x00") {
		t.Fatalf("testsrv: AddMessage: bad user %q or mailbox %q", user, mailbox)
	}
	md := filepath.Join(d.Dir, "home", user, "Maildir")
	mkdirMail(t, filepath.Join(d.Dir, "home", user))
	mkdirMail(t, md)
	if !strings.EqualFold(mailbox, "INBOX") {
		// Maildir++: folders are dot-directories marked by a maildirfolder file.
		md = filepath.Join(md, "."+mailbox)
		mkdirMail(t, md)
		marker := filepath.Join(md, "maildirfolder")
		writeFile(t, marker, nil, 0o600)
		chownMail(t, marker)
	}
	for _, sub := range []string{"cur", "new", "tmp"} {
		mkdirMail(t, filepath.Join(md, sub))
	}
	// Write to tmp and rename into new, as a delivery agent does, so that
	// dovecot never reads a half-written file.
	name := fmt.Sprintf("%d.M%dP%dQ%d.portico-test", time.Now().Unix(),
		time.Now().Nanosecond()/1000, os.Getpid(), msgSeq.Add(1))
	tmp := filepath.Join(md, "tmp", name)
	writeFile(t, tmp, rfc822, 0o600)
	chownMail(t, tmp)
	if err := os.Rename(tmp, filepath.Join(md, "new", name)); err != nil {
		t.Fatalf("testsrv: AddMessage: %v", err)
	}
}

func dovecotConfig(dir string, port, hport int, pop3Ports [2]int, opts DovecotOptions) string {
	trusted := "127.0.0.1/32"
	if opts.TrustedNetworks != nil {
		trusted = strings.Join(opts.TrustedNetworks, " ")
	}
	protocols := "imap"
	if opts.POP3 {
		protocols = "imap pop3"
	}
	oauthMechs, passwordMechs := "", ""
	if opts.OAuth2IntrospectionURL != "" {
		oauthMechs, passwordMechs = " xoauth2 oauthbearer", "  mechanisms = plain login\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# Generated by internal/testsrv.
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
log_timestamp = "%%Y-%%m-%%d %%H:%%M:%%S "
protocols = %[4]s
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login%[3]s
auth_master_user_separator = *
auth_verbose = yes
# Tests log in with wrong passwords on purpose; the default 2 s delay would
# only slow them down.
auth_failure_delay = 0
mail_max_userip_connections = 1000
login_trusted_networks = %[2]s
haproxy_trusted_networks = 127.0.0.1/32
`, dir, trusted, oauthMechs, protocols)
	if opts.MasterUser != "" {
		fmt.Fprintf(&b, `passdb {
  driver = passwd-file
  args = scheme=PLAIN %s/masters
  master = yes
  result_success = continue
}
`, dir)
	}
	if opts.OAuth2IntrospectionURL != "" {
		fmt.Fprintf(&b, `passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = %s/oauth2.conf.ext
}
`, dir)
	}
	fmt.Fprintf(&b, `passdb {
  driver = passwd-file
  args = scheme=PLAIN %[1]s/users
%[6]s}
userdb {
  driver = static
  args = uid=%[4]d gid=%[5]d home=%[1]s/home/%%u
}
mail_location = maildir:~/Maildir
# chroot needs a root-owned path and is pointless for a test.
service imap-login {
  chroot =
  inet_listener imap {
    port = %[2]d
  }
  inet_listener imap_haproxy {
    port = %[3]d
    haproxy = yes
  }
  inet_listener imaps {
    port = 0
  }
}
service anvil {
  chroot =
}
`, dir, port, hport, MailUID, MailGID, passwordMechs)
	if opts.POP3 {
		// The UIDL format is the one Dovecot recommends for new
		// installations; without it pop3 logs a warning per session.
		fmt.Fprintf(&b, `pop3_uidl_format = %%08Xu%%08Xv
service pop3-login {
  chroot =
  inet_listener pop3 {
    port = %d
  }
  inet_listener pop3_haproxy {
    port = %d
    haproxy = yes
  }
  inet_listener pop3s {
    port = 0
  }
}
`, pop3Ports[0], pop3Ports[1])
	}
	if opts.Extra != "" {
		b.WriteString(opts.Extra)
		b.WriteString("\n")
	}
	return b.String()
}

// scratchDir creates a world-traversable directory: dovecot's auth process
// (user dovecot) reads the users file and the mail processes (uid 65534)
// live in the homes, while t.TempDir is mode 0700 and owned by root. The
// path stays short because unix socket paths under base_dir are limited to
// 108 bytes.
func scratchDir(t testing.TB) string {
	t.Helper()
	parent := os.TempDir()
	if len(parent) > 40 {
		parent = "/tmp"
	}
	dir, err := os.MkdirTemp(parent, "portico-dovecot-")
	if err != nil {
		t.Fatalf("testsrv: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testsrv: %v", err)
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("testsrv: %v", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Fatalf("testsrv: %s is not traversable by other users (mode %v); dovecot's unprivileged processes need it: set TMPDIR=/tmp", p, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			break
		}
	}
	return dir
}

// checkPasswdField rejects what would corrupt a passwd-file line. The value
// is never printed: it may be a password.
func checkPasswdField(t testing.TB, what, v string) {
	t.Helper()
	if v == "" || strings.ContainsAny(v, ":\n\r\x00") {
		t.Fatalf("testsrv: %s is empty or contains ':' or a control character, which passwd-file cannot hold", what)
	}
}

func mkdirMail(t testing.TB, p string) {
	t.Helper()
	if err := os.Mkdir(p, 0o700); err != nil && !os.IsExist(err) {
		t.Fatalf("testsrv: %v", err)
	}
	chownMail(t, p)
}

func chownMail(t testing.TB, p string) {
	t.Helper()
	if err := os.Chown(p, MailUID, MailGID); err != nil {
		t.Fatalf("testsrv: %v", err)
	}
}

func writeFile(t testing.TB, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatalf("testsrv: %v", err)
	}
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
