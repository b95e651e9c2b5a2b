package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Password hashes as Dovecot stores them, so that an existing passdb can
// be imported as is: "{SCHEME}" followed by the crypt(3)-style string
// `doveadm pw -s SCHEME` writes, or that string alone.
//
//	{SHA512-CRYPT}$6$[rounds=N$]salt$hash
//	{SHA256-CRYPT}$5$[rounds=N$]salt$hash
//	{BLF-CRYPT}$2y$cost$salthash          (also $2a$, $2b$)
//	{ARGON2ID}$argon2id$v=19$m=..,t=..,p=..$salt$hash   (and {ARGON2I})
//	{CRYPT}<any of the crypt strings above>
//	{PLAIN}password                       (only when allowed)

// MaxPasswordLength bounds the passwords that are hashed: SHA-crypt's
// cost grows with the square of the length, and no real password is this
// long. Longer ones fail like a wrong password, in about the same time.
const MaxPasswordLength = 1024

// Bounds on the cost a stored hash may ask for, so that one corrupt entry
// cannot make each login of its user pin a CPU or eat the memory.
const (
	maxBcryptCost     = 16
	maxArgon2Memory   = 1 << 20 // KiB: 1 GiB
	maxArgon2Time     = 64
	maxArgon2Threads  = 64
	maxArgon2SaltHash = 1024
)

// ErrHashFormat is wrapped by the errors of hashes that cannot be used:
// an unknown scheme, a malformed string, a cost beyond the bounds, or
// {PLAIN} where it is not allowed. The errors name the scheme, never the
// hash.
var ErrHashFormat = errors.New("unusable password hash")

// hashScheme is one stored hash, parsed.
type hashScheme struct {
	name string // Dovecot's scheme name, for messages
	// params identifies the scheme and its cost, not the salt: hashes
	// with the same params cost the same to verify.
	params string
	verify func(password []byte) bool
	// dummy makes a hash with the same scheme and cost, of a random
	// password.
	dummy func() (string, error)
}

// VerifyHash reports whether password matches encoded, a stored hash as
// described above, in constant time with respect to the password. It
// returns an error wrapping ErrHashFormat when encoded cannot be used.
func VerifyHash(encoded, password string, allowPlain bool) (bool, error) {
	h, err := parseHash(encoded, allowPlain)
	if err != nil {
		return false, err
	}
	return verifyWith(h, password), nil
}

// verifyWith runs h on password, refusing over-long ones after the same
// work as for a password of the maximum length.
func verifyWith(h hashScheme, password string) bool {
	pw := []byte(password)
	tooLong := len(pw) > MaxPasswordLength
	if tooLong {
		pw = pw[:MaxPasswordLength]
	}
	return h.verify(pw) && !tooLong
}

func formatError(scheme, format string, args ...any) error {
	return fmt.Errorf("auth: %s hash: %s: %w", scheme, fmt.Sprintf(format, args...), ErrHashFormat)
}

// parseHash recognises encoded's scheme and prepares its verification.
func parseHash(encoded string, allowPlain bool) (hashScheme, error) {
	scheme, body := "", encoded
	if strings.HasPrefix(encoded, "{") {
		end := strings.IndexByte(encoded, '}')
		if end < 0 {
			return hashScheme{}, formatError("?", "no closing brace after the scheme")
		}
		scheme, body = strings.ToUpper(encoded[1:end]), encoded[end+1:]
		if !printableScheme(scheme) {
			return hashScheme{}, formatError("?", "unreadable scheme name")
		}
	}
	switch scheme {
	case "PLAIN", "CLEAR", "CLEARTEXT":
		if !allowPlain {
			return hashScheme{}, formatError(scheme, "passwords in clear are not allowed (auth.redis.allow_plain)")
		}
		return plainHash(scheme, body), nil
	case "", "CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "ARGON2ID", "ARGON2I":
	default:
		return hashScheme{}, formatError(scheme, "scheme not supported (use SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT or ARGON2ID)")
	}
	want := map[string]string{"SHA512-CRYPT": "$6$", "SHA256-CRYPT": "$5$", "BLF-CRYPT": "$2", "ARGON2ID": "$argon2id$", "ARGON2I": "$argon2i$"}[scheme]
	if want != "" && !strings.HasPrefix(body, want) {
		return hashScheme{}, formatError(scheme, "the string does not start with %s", want)
	}
	name := scheme
	switch {
	case strings.HasPrefix(body, "$5$") || strings.HasPrefix(body, "$6$"):
		if name == "" || name == "CRYPT" {
			name = map[byte]string{'5': "SHA256-CRYPT", '6': "SHA512-CRYPT"}[body[1]]
		}
		return shaCryptHash(name, body)
	case strings.HasPrefix(body, "$2a$") || strings.HasPrefix(body, "$2b$") || strings.HasPrefix(body, "$2y$"):
		return bcryptHash(body)
	case strings.HasPrefix(body, "$argon2id$") || strings.HasPrefix(body, "$argon2i$"):
		return argon2Hash(body)
	}
	if name == "" {
		name = "unprefixed"
	}
	return hashScheme{}, formatError(name, "unrecognised crypt string")
}

func printableScheme(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range s {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

func plainHash(scheme, stored string) hashScheme {
	// Comparing digests keeps the time independent of both lengths.
	want := sha256.Sum256([]byte(stored))
	return hashScheme{
		name: scheme, params: "{PLAIN}",
		verify: func(pw []byte) bool {
			got := sha256.Sum256(pw)
			return subtle.ConstantTimeCompare(got[:], want[:]) == 1
		},
		dummy: func() (string, error) { return "{PLAIN}" + randomString(), nil },
	}
}

func shaCryptHash(name, body string) (hashScheme, error) {
	p, err := parseShaCrypt(body)
	if err != nil || p.hash == "" {
		return hashScheme{}, formatError(name, "malformed")
	}
	if p.rounds > shaCryptRoundsLimit {
		return hashScheme{}, formatError(name, "rounds=%d is more than %d", p.rounds, shaCryptRoundsLimit)
	}
	setting := p
	setting.hash = ""
	return hashScheme{
		name:   name,
		params: "$" + p.v.id + "$" + strconv.Itoa(p.rounds),
		verify: func(pw []byte) bool {
			got := shaCrypt(setting, pw).hash
			return subtle.ConstantTimeCompare([]byte(got), []byte(p.hash)) == 1
		},
		dummy: func() (string, error) {
			d := setting
			d.salt = randomString()[:shaCryptSaltMax]
			return shaCrypt(d, []byte(randomString())).String(), nil
		},
	}, nil
}

func bcryptHash(body string) (hashScheme, error) {
	cost, err := bcrypt.Cost([]byte(body))
	if err != nil {
		return hashScheme{}, formatError("BLF-CRYPT", "malformed")
	}
	if cost > maxBcryptCost {
		return hashScheme{}, formatError("BLF-CRYPT", "cost %d is more than %d", cost, maxBcryptCost)
	}
	return hashScheme{
		name: "BLF-CRYPT", params: "$2$" + strconv.Itoa(cost),
		verify: func(pw []byte) bool {
			// crypt(3)'s blowfish, which Dovecot uses, reads the first
			// 72 bytes; x/crypto refuses longer passwords instead.
			if len(pw) > 72 {
				pw = pw[:72]
			}
			return bcrypt.CompareHashAndPassword([]byte(body), pw) == nil
		},
		dummy: func() (string, error) {
			h, err := bcrypt.GenerateFromPassword([]byte(randomString()), cost)
			return string(h), err
		},
	}, nil
}

// argon2Hash parses the PHC string libsodium (and so Dovecot) writes:
// $argon2id$v=19$m=65536,t=3,p=1$salt$hash, base64 without padding.
func argon2Hash(body string) (hashScheme, error) {
	parts := strings.Split(body, "$")
	if len(parts) != 6 || parts[0] != "" {
		return hashScheme{}, formatError("ARGON2", "malformed")
	}
	variant := parts[1]
	name := strings.ToUpper(variant)
	if parts[2] != "v=19" {
		return hashScheme{}, formatError(name, "version is not 19")
	}
	var m, t, p uint32
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil ||
		fmt.Sprintf("m=%d,t=%d,p=%d", m, t, p) != parts[3] {
		return hashScheme{}, formatError(name, "malformed parameters")
	}
	if m < 8 || m > maxArgon2Memory || t < 1 || t > maxArgon2Time || p < 1 || p > maxArgon2Threads || m < 8*p {
		return hashScheme{}, formatError(name, "parameters beyond the bounds (m<=%d KiB, t<=%d, p<=%d)", maxArgon2Memory, maxArgon2Time, maxArgon2Threads)
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	want, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(salt) < 8 || len(want) < 16 || len(salt) > maxArgon2SaltHash || len(want) > maxArgon2SaltHash {
		return hashScheme{}, formatError(name, "malformed salt or hash")
	}
	key := argon2.IDKey
	if variant == "argon2i" {
		key = argon2.Key
	}
	return hashScheme{
		name:   name,
		params: fmt.Sprintf("$%s$%s$%d$%d", variant, parts[3], len(salt), len(want)),
		verify: func(pw []byte) bool {
			got := key(pw, salt, t, m, uint8(p), uint32(len(want)))
			return subtle.ConstantTimeCompare(got, want) == 1
		},
		dummy: func() (string, error) {
			s := make([]byte, len(salt))
			rand.Read(s)
			h := key([]byte(randomString()), s, t, m, uint8(p), uint32(len(want)))
			return fmt.Sprintf("$%s$v=19$%s$%s$%s", variant, parts[3],
				base64.RawStdEncoding.EncodeToString(s), base64.RawStdEncoding.EncodeToString(h)), nil
		},
	}, nil
}

// randomString returns 32 random characters of crypt's alphabet.
func randomString() string {
	b := make([]byte, 32)
	rand.Read(b)
	for i := range b {
		b[i] = cryptB64[b[i]&0x3f]
	}
	return string(b)
}
