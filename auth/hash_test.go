package auth

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// doveadmPW returns `doveadm pw -s scheme -p pw [args]`, the hash Dovecot
// itself writes. doveadm is required (scripts/install-test-deps.sh
// installs dovecot): the point is to read Dovecot's output as is.
func doveadmPW(t testing.TB, scheme, pw string, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("doveadm")
	if err != nil {
		t.Fatalf("doveadm not found (install dovecot-core: scripts/install-test-deps.sh): %v", err)
	}
	out, err := exec.Command(bin, append([]string{"pw", "-s", scheme, "-p", pw}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("doveadm pw -s %s: %v: %s", scheme, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestVerifyDoveadmHashes(t *testing.T) {
	const pw = "Pa55 wörd:with$odd{chars}"
	for _, tc := range []struct {
		scheme string
		args   []string
		prefix string
	}{
		{"SHA512-CRYPT", nil, "{SHA512-CRYPT}$6$"},
		{"SHA512-CRYPT", []string{"-r", "20000"}, "{SHA512-CRYPT}$6$rounds=20000$"},
		{"SHA256-CRYPT", nil, "{SHA256-CRYPT}$5$"},
		{"SHA256-CRYPT", []string{"-r", "7000"}, "{SHA256-CRYPT}$5$rounds=7000$"},
		{"BLF-CRYPT", nil, "{BLF-CRYPT}$2y$"},
		{"BLF-CRYPT", []string{"-r", "8"}, "{BLF-CRYPT}$2y$08$"},
		{"CRYPT", nil, "{CRYPT}$2y$"},
		{"ARGON2ID", nil, "{ARGON2ID}$argon2id$v=19$"},
		{"ARGON2I", nil, "{ARGON2I}$argon2i$v=19$"},
	} {
		enc := doveadmPW(t, tc.scheme, pw, tc.args...)
		name := strings.Join(append([]string{tc.scheme}, tc.args...), " ")
		if !strings.HasPrefix(enc, tc.prefix) {
			t.Fatalf("%s: doveadm wrote %q, want the prefix %s", name, enc, tc.prefix)
		}
		_, bare, _ := strings.Cut(enc, "}")
		for _, e := range []string{enc, bare, strings.ToLower(enc[:strings.IndexByte(enc, '}')+1]) + bare} {
			if ok, err := VerifyHash(e, pw, false); !ok || err != nil {
				t.Errorf("%s: %q does not verify: %v", name, e, err)
			}
		}
		for _, wrong := range []string{"", "pa55 wörd:with$odd{chars}", pw + " ", pw[:len(pw)-1]} {
			if ok, err := VerifyHash(enc, wrong, false); ok || err != nil {
				t.Errorf("%s: wrong password %q: %v, %v", name, wrong, ok, err)
			}
		}
	}
}

func TestVerifyHashErrors(t *testing.T) {
	sha := doveadmPW(t, "SHA512-CRYPT", "pw")
	_, shaBare, _ := strings.Cut(sha, "}")
	for _, enc := range []string{
		"{PLAIN}pw",
		"{CLEAR}pw",
		"{MD5-CRYPT}$1$abc$def",
		"{SSHA512}c2VjcmV0",
		"{SHA512-CRYPT",
		"{SHA256-CRYPT}" + shaBare, // scheme and string disagree
		"{BLF-CRYPT}" + shaBare,
		"$6$rounds=99999999$salt$hash", // beyond the rounds bound
		"$6$salt",                      // a setting, no hash
		"$2y$31$" + strings.Repeat("a", 53),
		"$2y$xx$garbage",
		"$argon2id$v=19$m=4194304,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", // 4 GiB
		"$argon2id$v=16$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=65536,t=3$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=65536,t=3,p=1$!!!$aGFzaGhhc2hoYXNoaGFzaA",
		"plaintext-secret123",
		"{}x",
		"{\x00bad}x",
	} {
		ok, err := VerifyHash(enc, "pw", false)
		if ok || !errors.Is(err, ErrHashFormat) {
			t.Errorf("%q: %v, %v; want ErrHashFormat", enc, ok, err)
			continue
		}
		// The message names the scheme at most, never the stored string.
		if _, body, _ := strings.Cut(enc, "}"); len(body) > 4 && strings.Contains(err.Error(), body) {
			t.Errorf("%q: the error shows the hash: %v", enc, err)
		}
		if len(enc) > 8 && strings.Contains(err.Error(), enc[len(enc)-8:]) {
			t.Errorf("%q: the error shows the hash: %v", enc, err)
		}
	}
	// {PLAIN} only when allowed.
	for _, enc := range []string{"{PLAIN}pw", "{plain}pw", "{CLEARTEXT}pw"} {
		if ok, err := VerifyHash(enc, "pw", true); !ok || err != nil {
			t.Errorf("%q allowed: %v, %v", enc, ok, err)
		}
		if ok, err := VerifyHash(enc, "pW", true); ok || err != nil {
			t.Errorf("%q wrong: %v, %v", enc, ok, err)
		}
	}
}

func TestVerifyOverlongPassword(t *testing.T) {
	long := strings.Repeat("x", MaxPasswordLength+1)
	p, _ := parseShaCrypt("$6$saltsalt$")
	enc := shaCrypt(p, []byte(long)).String()
	if ok, err := VerifyHash(enc, long, false); ok || err != nil {
		t.Errorf("a password over %d bytes verified: %v, %v", MaxPasswordLength, ok, err)
	}
	// bcrypt as crypt(3) does it: the first 72 bytes count.
	blf := doveadmPW(t, "BLF-CRYPT", strings.Repeat("y", 80), "-r", "4")
	if ok, err := VerifyHash(blf, strings.Repeat("y", 80), false); !ok || err != nil {
		t.Errorf("an 80-byte password against doveadm's BLF-CRYPT: %v, %v", ok, err)
	}
}

// TestUnknownUserCostsTheSame: after a hash is seen, an unknown user is
// checked against a dummy of the same scheme and cost.
func TestUnknownUserCostsTheSame(t *testing.T) {
	ctx := context.Background()
	var h Hashes
	if d := h.dummyScheme(); d.params != "$6$5000" {
		t.Errorf("initial dummy %q, want SHA512-CRYPT 5000 rounds", d.params)
	}
	enc := doveadmPW(t, "SHA512-CRYPT", "right", "-r", "200000")
	if ok, err := h.Verify(ctx, enc, "wrong"); ok || err != nil {
		t.Fatal(ok, err)
	}
	if d := h.dummyScheme(); d.params != "$6$200000" {
		t.Fatalf("dummy %q after a 200000-round hash", d.params)
	}
	// The fastest of five runs: a busy machine only ever adds time.
	measure := func(enc string) time.Duration {
		var ds []time.Duration
		for range 5 {
			t0 := time.Now()
			if ok, err := h.Verify(ctx, enc, "wrong"); ok || err != nil {
				t.Fatal(ok, err)
			}
			ds = append(ds, time.Since(t0))
		}
		slicesSort(ds)
		return ds[0]
	}
	known, unknown := measure(enc), measure("")
	t.Logf("wrong password %v, unknown user %v", known, unknown)
	if unknown < known/3 || unknown > known*3 {
		t.Errorf("unknown user takes %v, a wrong password %v", unknown, known)
	}
	argon := doveadmPW(t, "ARGON2ID", "right")
	h.Verify(ctx, argon, "wrong")
	if d := h.dummyScheme(); !strings.HasPrefix(d.params, "$argon2id$m=65536,t=3,p=1$") {
		t.Errorf("dummy %q after an argon2id hash", d.params)
	}
}

func slicesSort(ds []time.Duration) {
	for i := range ds {
		for j := i + 1; j < len(ds); j++ {
			if ds[j] < ds[i] {
				ds[i], ds[j] = ds[j], ds[i]
			}
		}
	}
}

func TestHashesMaxConcurrent(t *testing.T) {
	h := &Hashes{MaxConcurrent: 1}
	h.Verify(context.Background(), "", "x") // initialises
	h.sem <- struct{}{}                     // one verification in progress
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := h.Verify(ctx, "", "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the context's", err)
	}
	<-h.sem
}
