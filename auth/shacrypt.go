package auth

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"hash"
	"strconv"
	"strings"
)

// SHA-crypt, the $5$ (SHA-256) and $6$ (SHA-512) password hashes of glibc's
// crypt(3), which Dovecot writes as {SHA256-CRYPT} and {SHA512-CRYPT}.
// Implemented from Ulrich Drepper's public specification ("Unix crypt
// using SHA-256 and SHA-512"), which golang.org/x/crypto does not cover.

const (
	shaCryptSaltMax       = 16
	shaCryptRoundsDefault = 5000
	shaCryptRoundsMin     = 1000
	shaCryptRoundsMax     = 999_999_999
	// shaCryptRoundsLimit bounds the rounds Portico accepts from a stored
	// hash: a corrupt or hostile entry must not pin a CPU for minutes.
	// doveadm writes 5000; 10 million is about 10 s of SHA-512.
	shaCryptRoundsLimit = 10_000_000
)

const cryptB64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// shaCryptVariant is SHA-256 or SHA-512 crypt.
type shaCryptVariant struct {
	id    string // "5" or "6"
	new   func() hash.Hash
	order [][3]int // byte triples of the final encoding, then the tail
}

var sha256Crypt = &shaCryptVariant{id: "5", new: sha256.New, order: [][3]int{
	{0, 10, 20}, {21, 1, 11}, {12, 22, 2}, {3, 13, 23}, {24, 4, 14},
	{15, 25, 5}, {6, 16, 26}, {27, 7, 17}, {18, 28, 8}, {9, 19, 29},
}}

var sha512Crypt = &shaCryptVariant{id: "6", new: sha512.New, order: [][3]int{
	{0, 21, 42}, {22, 43, 1}, {44, 2, 23}, {3, 24, 45}, {25, 46, 4},
	{47, 5, 26}, {6, 27, 48}, {28, 49, 7}, {50, 8, 29}, {9, 30, 51},
	{31, 52, 10}, {53, 11, 32}, {12, 33, 54}, {34, 55, 13}, {56, 14, 35},
	{15, 36, 57}, {37, 58, 16}, {59, 17, 38}, {18, 39, 60}, {40, 61, 19},
	{62, 20, 41},
}}

// shaCryptParams are the parts of a $5$/$6$ string.
type shaCryptParams struct {
	v          *shaCryptVariant
	rounds     int
	custom     bool // "rounds=" was written, so it is written back
	salt, hash string
}

var errShaCryptFormat = errors.New("malformed SHA-crypt hash")

// parseShaCrypt splits "$6$[rounds=N$]salt[$hash]". The hash part may be
// missing (a setting, as crypt(3) takes it).
func parseShaCrypt(s string) (shaCryptParams, error) {
	var p shaCryptParams
	switch {
	case strings.HasPrefix(s, "$5$"):
		p.v = sha256Crypt
	case strings.HasPrefix(s, "$6$"):
		p.v = sha512Crypt
	default:
		return p, errShaCryptFormat
	}
	s = s[3:]
	p.rounds = shaCryptRoundsDefault
	if r, ok := strings.CutPrefix(s, "rounds="); ok {
		n, rest, found := strings.Cut(r, "$")
		v, err := strconv.ParseUint(n, 10, 64)
		if !found || err != nil {
			return p, errShaCryptFormat
		}
		// The specification clamps rather than refuses.
		p.rounds = int(min(max(v, shaCryptRoundsMin), shaCryptRoundsMax))
		p.custom, s = true, rest
	}
	p.salt, p.hash, _ = strings.Cut(s, "$")
	if len(p.salt) > shaCryptSaltMax {
		p.salt = p.salt[:shaCryptSaltMax]
	}
	if strings.ContainsAny(p.salt, "$:\n") {
		return p, errShaCryptFormat
	}
	return p, nil
}

// String writes the parameters back in crypt(3)'s form.
func (p shaCryptParams) String() string {
	var b strings.Builder
	b.WriteString("$" + p.v.id + "$")
	if p.custom {
		b.WriteString("rounds=" + strconv.Itoa(p.rounds) + "$")
	}
	b.WriteString(p.salt + "$" + p.hash)
	return b.String()
}

// shaCrypt computes the hash of key with the variant, salt and rounds of
// p, and returns p with its hash set.
func shaCrypt(p shaCryptParams, key []byte) shaCryptParams {
	v, salt := p.v, []byte(p.salt)
	h := v.new()

	// Digest B: key, salt, key.
	h.Write(key)
	h.Write(salt)
	h.Write(key)
	b := h.Sum(nil)
	size := len(b)

	// Digest A: key, salt, then B for the length of the key, then B or
	// the key for each bit of the key's length.
	h.Reset()
	h.Write(key)
	h.Write(salt)
	n := len(key)
	for ; n > size; n -= size {
		h.Write(b)
	}
	h.Write(b[:n])
	for n = len(key); n > 0; n >>= 1 {
		if n&1 != 0 {
			h.Write(b)
		} else {
			h.Write(key)
		}
	}
	a := h.Sum(nil)

	// Digest DP: the key once per byte of the key; P is DP stretched
	// to the key's length.
	h.Reset()
	for range len(key) {
		h.Write(key)
	}
	pseq := stretch(h.Sum(nil), len(key))

	// Digest DS: the salt 16 + A[0] times; S is DS cut to the salt's
	// length.
	h.Reset()
	for range 16 + int(a[0]) {
		h.Write(salt)
	}
	sseq := stretch(h.Sum(nil), len(salt))

	c := a
	for i := range p.rounds {
		h.Reset()
		if i&1 != 0 {
			h.Write(pseq)
		} else {
			h.Write(c)
		}
		if i%3 != 0 {
			h.Write(sseq)
		}
		if i%7 != 0 {
			h.Write(pseq)
		}
		if i&1 != 0 {
			h.Write(c)
		} else {
			h.Write(pseq)
		}
		c = h.Sum(c[:0])
	}

	var out []byte
	for _, t := range v.order {
		out = b64From24(out, c[t[0]], c[t[1]], c[t[2]], 4)
	}
	if size == sha512.Size {
		out = b64From24(out, 0, 0, c[63], 2)
	} else {
		out = b64From24(out, 0, c[31], c[30], 3)
	}
	p.hash = string(out)
	return p
}

// stretch repeats d to n bytes.
func stretch(d []byte, n int) []byte {
	out := make([]byte, 0, n)
	for len(out)+len(d) <= n {
		out = append(out, d...)
	}
	return append(out, d[:n-len(out)]...)
}

// b64From24 appends n characters of crypt's base64 for three bytes, least
// significant six bits first.
func b64From24(out []byte, b2, b1, b0 byte, n int) []byte {
	w := uint(b2)<<16 | uint(b1)<<8 | uint(b0)
	for range n {
		out = append(out, cryptB64[w&0x3f])
		w >>= 6
	}
	return out
}
