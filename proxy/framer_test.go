package proxy

import (
	"bytes"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"testing"
)

// boundaries returns the offsets in s at which a response begins (the
// positions where a framer must report a boundary), computed the slow way
// from a whole stream.
func boundaries(s string) []int {
	var out []int
	i := 0
	atStart := true
	for i < len(s) {
		if atStart {
			out = append(out, i)
		}
		j := strings.IndexByte(s[i:], '\n')
		if j < 0 {
			return out
		}
		line := s[i : i+j]
		i += j + 1
		n, ok := literalAtEnd([]byte(line))
		if !ok {
			atStart = true
			continue
		}
		if n > int64(len(s)-i) {
			return out
		}
		i += int(n)
		atStart = false
	}
	if atStart {
		out = append(out, len(s))
	}
	return out
}

var frameStreams = []struct {
	name   string
	stream string
	// want are the response boundaries, as offsets; nil means "compute
	// with boundaries" (the test then only checks chunking invariance).
	want []int
}{
	{"lines", "* 1 EXISTS\r\n* 0 RECENT\r\na OK done\r\n", []int{0, 12, 24, 35}},
	{"literal", "* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\na OK\r\n", []int{0, 31, 37}},
	{"literal-plus", "a APPEND INBOX {3+}\r\nxyz\r\nb NOOP\r\n", []int{0, 26, 34}},
	{"binary", "* 2 FETCH (BINARY[1] ~{4}\r\n\x00\r\n\n)\r\nb OK\r\n", []int{0, 34, 40}},
	{"zero", "* 3 FETCH (BODY[] {0}\r\n)\r\na OK\r\n", []int{0, 26, 32}},
	{"two-literals", "* 4 FETCH (A {2}\r\n{} B {3}\r\n}\r\n)\r\n* 5 X\r\n", []int{0, 34, 41}},
	{"empty-continuation", "* 4 FETCH (A {2}\r\n{}\r\n B {3}\r\n", []int{0, 22}},
	{"quoted-brace", "* 5 FETCH (ENVELOPE (\"{5}\" NIL)) \r\n* 6 LIST () \"/\" \"a{3}\"\r\n", []int{0, 35, 59}},
	{"mid-line-marker", "* OK {5} is text\r\nnext\r\n", []int{0, 18, 24}},
	{"bare-lf", "* 1 FETCH (BODY[] {3}\nabc)\n* OK\n", []int{0, 27, 32}},
	{"literal-with-crlf-brace", "* 1 FETCH (BODY[] {8}\r\n{99}\r\n\r\n)\r\n* 2 X\r\n", []int{0, 34, 41}},
	{"no-digits", "* OK {}\r\n* OK {+}\r\n* OK {x}\r\n", []int{0, 9, 19, 29}},
	{"partial-line", "* 1 FETCH (", []int{0}},
	{"long-literal", "* 1 FETCH (BODY[] {1000}\r\n" + strings.Repeat("a\r\n{3}\r\n", 125) + ")\r\nz OK\r\n", nil},
	{"long-line", "* SEARCH" + strings.Repeat(" 12345", 200) + " {4}\r\nabcd)\r\n* OK\r\n", nil},
	{"huge-count", "* 1 FETCH (BODY[] {0000000000000000000000000000004}\r\nabcd\r\n", nil},
}

// splitAndCheck feeds s in the given chunks and records, at every chunk
// end, whether the framer says it is at a boundary; it then checks that
// against want.
func checkChunks(t *testing.T, s string, want []int, cuts []int) {
	t.Helper()
	isB := map[int]bool{}
	for _, w := range want {
		isB[w] = true
	}
	var f framer
	prev := 0
	for _, c := range append(cuts, len(s)) {
		f.feed([]byte(s[prev:c]))
		if got := f.atBoundary(); got != isB[c] {
			t.Fatalf("cuts %v: at %d: atBoundary=%v, want %v", cuts, c, got, isB[c])
		}
		prev = c
	}
}

func TestFramerEverySplit(t *testing.T) {
	for _, tc := range frameStreams {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want == nil {
				want = boundaries(tc.stream)
			} else if got := boundaries(tc.stream); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("reference boundaries %v, want %v", got, want)
			}
			s := tc.stream
			// Every single split point, and every pair of split points.
			for i := 0; i <= len(s); i++ {
				checkChunks(t, s, want, []int{i})
			}
			if len(s) <= 64 {
				for i := 0; i <= len(s); i++ {
					for j := i; j <= len(s); j++ {
						checkChunks(t, s, want, []int{i, j})
					}
				}
			}
			// Byte by byte.
			cuts := make([]int, 0, len(s))
			for i := 1; i < len(s); i++ {
				cuts = append(cuts, i)
			}
			checkChunks(t, s, want, cuts)
		})
	}
}

// TestFramerAdvanceStops checks that advance with stop set halts exactly
// at the first boundary after the start, whatever the chunking.
func TestFramerAdvanceStops(t *testing.T) {
	for _, tc := range frameStreams {
		s := tc.stream
		want := boundaries(s)
		for start := 0; start <= len(s); start++ {
			// Feed up to start, then advance to the next boundary in one go.
			var f framer
			f.feed([]byte(s[:start]))
			k := f.advance([]byte(s[start:]), true)
			next := -1
			for _, w := range want {
				if w >= start {
					next = w
					break
				}
			}
			if next < 0 {
				if k != len(s)-start || f.atBoundary() {
					t.Errorf("%s: from %d: advance=%d, want all with no boundary", tc.name, start, k)
				}
				continue
			}
			if start+k != next || !f.atBoundary() {
				t.Errorf("%s: from %d: stopped at %d (boundary %v), want %d", tc.name, start, start+k, f.atBoundary(), next)
			}
		}
	}
}

// fetchStream builds a FETCH-like response stream with n messages of
// random sizes, random bytes (CRLFs and braces included) in the literals,
// and returns it with its boundaries.
func fetchStream(r *mrand.Rand, n, maxSize int) ([]byte, []int) {
	var b bytes.Buffer
	var want []int
	for i := 1; i <= n; i++ {
		want = append(want, b.Len())
		size := r.IntN(maxSize + 1)
		fmt.Fprintf(&b, "* %d FETCH (UID %d FLAGS (\\Seen) BODY[] {%d}\r\n", i, 1000+i, size)
		lit := make([]byte, size)
		for j := range lit {
			switch r.IntN(16) {
			case 0:
				lit[j] = '\n'
			case 1:
				lit[j] = '\r'
			case 2:
				lit[j] = '}'
			case 3:
				lit[j] = '{'
			default:
				lit[j] = byte('a' + r.IntN(26))
			}
		}
		b.Write(lit)
		if r.IntN(4) == 0 {
			fmt.Fprintf(&b, " ENVELOPE (\"{5}\" NIL \"a {3}\" {2}\r\n{}))\r\n")
		} else {
			b.WriteString(")\r\n")
		}
		if r.IntN(8) == 0 {
			want = append(want, b.Len())
			b.WriteString("* OK [ALERT] hello {x}\r\n")
		}
	}
	want = append(want, b.Len())
	b.WriteString("a OK FETCH done\r\n")
	want = append(want, b.Len())
	return b.Bytes(), want
}

func TestFramerRandomChunks(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		s, want := fetchStream(r, 1+r.IntN(20), 300)
		if got := boundaries(string(s)); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("round %d: reference boundaries %v, want %v", round, got, want)
		}
		var cuts []int
		for c := r.IntN(40); c < len(s); c += 1 + r.IntN(60) {
			cuts = append(cuts, c)
		}
		checkChunks(t, string(s), want, cuts)
	}
}

func TestLiteralAtEnd(t *testing.T) {
	for _, tc := range []struct {
		line string
		n    int64
		ok   bool
	}{
		{"{5}", 5, true}, {"{5}\r", 5, true}, {"x {12+}\r", 12, true}, {"~{0}", 0, true},
		{"{}", 0, false}, {"{+}", 0, false}, {"5}", 0, false}, {"{5", 0, false},
		{"\"{5}\"", 0, false}, {"{5}x", 0, false}, {"{-5}", 0, false}, {"{5++}", 0, false},
		{"{123456789012345678}", 123456789012345678, true},
		{"{1234567890123456789}", 1<<63 - 1, true},
		{"x 1234567890123456789}", 1<<63 - 1, true},
		{"x 123456789012345678}", 0, false},
		{"", 0, false}, {"\r", 0, false}, {"}", 0, false},
	} {
		n, ok := literalAtEnd([]byte(tc.line))
		if n != tc.n || ok != tc.ok {
			t.Errorf("literalAtEnd(%q) = %d, %v; want %d, %v", tc.line, n, ok, tc.n, tc.ok)
		}
	}
}

func TestFramerCompress(t *testing.T) {
	for _, tc := range []struct {
		stream string
		want   bool
	}{
		{"a COMPRESS DEFLATE\r\n", true},
		{"a1b2 compress deflate\r\n", true},
		{"x CoMpReSs\r\n", true},
		{"x COMPRESS\n", true},
		{"a NOOP\r\nb COMPRESS DEFLATE\r\n", true},
		{"a COMPRESSED\r\n", false},
		{"a NOOP COMPRESS\r\n", false},
		{"COMPRESS DEFLATE\r\n", false},
		{" COMPRESS DEFLATE\r\n", false},
		// Inside a literal or after one, it is data.
		{"a APPEND INBOX {20}\r\nb COMPRESS DEFLATE\r\n\r\n", false},
		{"a APPEND INBOX {2}\r\nab COMPRESS DEFLATE\r\n", false},
		{"a APPEND INBOX {0}\r\n b COMPRESS\r\nc NOOP\r\n", false},
		{"a APPEND INBOX {0}\r\n\r\nc COMPRESS DEFLATE\r\n", true},
		// A long tag: the head holds 40 bytes.
		{strings.Repeat("t", 31) + " COMPRESS DEFLATE\r\n", true},
		{strings.Repeat("t", 33) + " COMPRESS DEFLATE\r\n", false},
	} {
		for cut := 0; cut <= len(tc.stream); cut++ {
			f := framer{heads: true}
			f.feed([]byte(tc.stream[:cut]))
			f.feed([]byte(tc.stream[cut:]))
			if f.compress != tc.want {
				t.Errorf("%q cut at %d: compress=%v, want %v", tc.stream, cut, f.compress, tc.want)
				break
			}
		}
	}
	// Without heads, nothing is captured.
	var f framer
	f.feed([]byte("a COMPRESS DEFLATE\r\n"))
	if f.compress {
		t.Error("compress seen without heads")
	}
}

func TestFramerNoAllocs(t *testing.T) {
	s, _ := fetchStream(mrand.New(mrand.NewPCG(3, 4)), 50, 2000)
	f := framer{heads: true}
	allocs := testing.AllocsPerRun(20, func() {
		for i := 0; i < len(s); i += 97 {
			f.feed(s[i:min(i+97, len(s))])
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per stream", allocs)
	}
}

// BenchmarkFramer follows a 1 MiB FETCH-like stream (messages of up to
// 64 KiB, some short lines) in 64 KiB chunks, as the splice reads it.
func BenchmarkFramer(b *testing.B) {
	r := mrand.New(mrand.NewPCG(5, 6))
	var s []byte
	for len(s) < 1<<20 {
		part, _ := fetchStream(r, 20, 64<<10)
		s = append(s, part...)
	}
	s = s[:1<<20]
	b.SetBytes(int64(len(s)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var f framer
		for j := 0; j < len(s); j += 64 << 10 {
			f.feed(s[j:min(j+64<<10, len(s))])
		}
	}
}

// BenchmarkFramerLines follows a 1 MiB stream of short lines (FETCH FLAGS
// of a large mailbox), the framer's worst case.
func BenchmarkFramerLines(b *testing.B) {
	var s []byte
	for i := 1; len(s) < 1<<20; i++ {
		s = fmt.Appendf(s, "* %d FETCH (UID %d FLAGS (\\Seen $Junk))\r\n", i, i+1000)
	}
	s = s[:1<<20]
	b.SetBytes(int64(len(s)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var f framer
		for j := 0; j < len(s); j += 64 << 10 {
			f.feed(s[j:min(j+64<<10, len(s))])
		}
	}
}
