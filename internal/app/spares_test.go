package app

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/internal/membackend"
	"github.com/portico-mail/portico/internal/testcert"
	"github.com/portico-mail/portico/internal/testsrv"
)

// TestSpareConnectionsReload: a backend's spare_connections are there
// after a login, closed by a reload (the new generation's backends get
// their own at their first login) and at the end, with no goroutine left.
func TestSpareConnectionsReload(t *testing.T) {
	be, err := membackend.Start("127.0.0.1:0", membackend.User{Name: "alice@example.test", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := relay(t, ln, be.Addr())
	baseline := runtime.NumGoroutine()

	dir := t.TempDir()
	_, certFile, keyFile := testcert.Files(t, dir, "localhost")
	addr := "127.0.0.1:" + fmt.Sprint(testsrv.FreePort(t))
	path := filepath.Join(dir, "portico.yaml")
	os.WriteFile(path, []byte(aliceConfig(addr, certFile, keyFile, "{disabled: true}",
		fmt.Sprintf(`address: "%s", spare_connections: 2`, ln.Addr()))), 0o600)

	p, logs, stop := runProcess(t, path, addr)
	login := func() {
		t.Helper()
		if l := loginLogout(t, addr); !strings.HasPrefix(l, "a OK") {
			t.Fatalf("login: %q\n%s", l, logs.String())
		}
	}
	waitOpen := func(what string, n int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for open.Load() != n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d backend connections open, want %d", what, open.Load(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	login()
	waitOpen("after a login", 2)
	login() // on a spare
	waitOpen("after a login on a spare", 2)
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	waitOpen("after a reload", 0)
	login()
	waitOpen("after a login under the new configuration", 2)

	stop()
	waitOpen("after Run", 0)
	checkGoroutines(t, baseline)
}
