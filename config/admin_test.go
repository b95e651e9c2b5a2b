package config

import (
	"strings"
	"testing"
)

func TestAdmin(t *testing.T) {
	f := newFixture(t)
	t.Setenv("PORTICO_TEST_ADMIN_TOKEN", "0123456789abcdef0123")
	t.Setenv("PORTICO_TEST_SHORT_TOKEN", "short")
	env := "    token: {env: PORTICO_TEST_ADMIN_TOKEN}\n"
	for _, tc := range []struct {
		name, admin string
		addr, err   string // want the address, or an error containing err
	}{
		{"absent", "", "", ""},
		{"default address", "admin: {}\n", DefaultAdminAddress, ""},
		{"loopback without token", "admin:\n  address: 127.0.0.1:9100\n", "127.0.0.1:9100", ""},
		{"localhost without token", "admin:\n  address: localhost:9100\n", "localhost:9100", ""},
		{"ipv6 loopback", "admin:\n  address: \"[::1]:9100\"\n", "[::1]:9100", ""},
		{"wildcard without token", "admin:\n  address: \":9100\"\n", "", `admin.token: is required when admin.address ":9100" is not a loopback address`},
		{"lan without token", "admin:\n  address: 10.1.2.3:9100\n", "", `admin.token: is required`},
		{"wildcard with token", "admin:\n  address: \":9100\"\n" + strings.Replace(env, "    ", "  ", 1), ":9100", ""},
		{"inline token", "admin:\n  address: \":9100\"\n  token: 0123456789abcdef0123\n", "", `admin.token: must be {env: NAME} or {file: PATH}`},
		{"short token", "admin:\n  address: \":9100\"\n  token: {env: PORTICO_TEST_SHORT_TOKEN}\n", "", `admin.token: must be at least 16 characters`},
		{"unset env", "admin:\n  token: {env: PORTICO_TEST_NO_SUCH_VAR}\n", "", `admin.token: environment variable PORTICO_TEST_NO_SUCH_VAR is not set`},
		{"bad address", "admin:\n  address: nope\n", "", `admin.address: "nope" is not host:port`},
		{"conflicts with a listener", "admin:\n  address: 127.0.0.1:993\n", "", `admin.address: "127.0.0.1:993" conflicts with listeners[0].address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(f.base("", quiet+tc.admin)), "portico.yaml")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "0123456789abcdef0123") {
					t.Errorf("the token is in the error: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.addr == "" {
				if c.Admin != nil {
					t.Errorf("admin = %+v, want nil", c.Admin)
				}
				return
			}
			if c.Admin == nil || c.Admin.Address != tc.addr {
				t.Fatalf("admin = %+v, want address %q", c.Admin, tc.addr)
			}
		})
	}
}
