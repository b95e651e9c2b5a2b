package routing

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	tests := []struct {
		name, in, domain string
		want             string // "" means the name must be refused
	}{
		{"plain", "alice@example.com", "", "alice@example.com"},
		{"mixed case", "Alice@Example.COM", "", "alice@example.com"},
		{"unicode case", "ÄLICE@EXAMPLE.COM", "", "älice@example.com"},
		{"trim spaces", "  bob@example.com ", "", "bob@example.com"},
		{"default domain", "Bob", "example.com", "bob@example.com"},
		{"default domain lower-cased", "bob", "Example.COM", "bob@example.com"},
		{"domain given wins", "bob@other.org", "example.com", "bob@other.org"},
		{"no domain, no default", "bob", "", "bob"},
		{"plus and dots", "o'brien+tag.x@example.com", "", "o'brien+tag.x@example.com"},
		{"full-width kept apart", "ＵＳＥＲ", "", "ｕｓｅｒ"},
		{"max length", strings.Repeat("a", 255), "", strings.Repeat("a", 255)},

		{"empty", "", "example.com", ""},
		{"only spaces", "   ", "example.com", ""},
		{"CRLF inside", "a\r\nb", "", ""},
		{"trailing CRLF", "alice\r\n", "", ""},
		{"trailing LF", "alice\n", "", ""},
		{"NUL", "a\x00b", "", ""},
		{"DEL", "a\x7fb", "", ""},
		{"C1 control", "a\u0085b", "", ""},
		{"tab", "a\tb", "", ""},
		{"space inside", "a b", "", ""},
		{"no-break space", "a\u00a0b", "", ""},
		{"ideographic space", "a\u3000b", "", ""},
		{"bidi override", "a\u202eb", "", ""},
		{"zero width space", "a\u200bb", "", ""},
		{"double quote", `"`, "", ""},
		{"quoted name", `"alice"@example.com`, "", ""},
		{"backslash", `\`, "", ""},
		{"literal", "{3}", "", ""},
		{"hash tag", "a{x}@example.com", "", ""},
		{"star", "*", "", ""},
		{"question", "?", "", ""},
		{"class", "[ab]", "", ""},
		{"percent var", "%u", "", ""},
		{"percent brace", "%{pass}", "", ""},
		{"parens", "a(b)", "", ""},
		{"too long", strings.Repeat("a", 256), "", ""},
		{"too long with domain", strings.Repeat("a", 250), "example.com", ""},
		{"1 MB", strings.Repeat("a", 1<<20), "", ""},
		{"1 MB of spaces around", strings.Repeat(" ", 1<<20) + "a" + strings.Repeat(" ", 1<<20), "", "a"},
		{"invalid UTF-8", "al\xffice", "", ""},
		{"truncated UTF-8", "al\xc3", "", ""},
		{"two @", "a@b@example.com", "", ""},
		{"two @ via default domain", "a", "b@example.com", ""},
		{"empty local", "@example.com", "", ""},
		{"empty domain", "alice@", "example.com", ""},
		{"bad default domain", "alice", "exa mple.com", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Normalize(tt.in, tt.domain)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("Normalize(%q) = %q, want error", short(tt.in), got)
				}
				if !errors.Is(err, ErrInvalidUser) {
					t.Fatalf("error %v does not wrap ErrInvalidUser", err)
				}
				if got != "" {
					t.Errorf("got %q with an error", got)
				}
				// The input may be a password typed in the wrong field.
				if in := strings.TrimSpace(tt.in); len(in) > 2 && strings.Contains(err.Error(), in) {
					t.Errorf("error %q echoes the input", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Normalize(%q): %v", short(tt.in), err)
			}
			if got != tt.want {
				t.Fatalf("Normalize(%q) = %q, want %q", short(tt.in), got, tt.want)
			}
			// Idempotent: a normalised name is its own normal form.
			if again, err := Normalize(got, tt.domain); err != nil || again != got {
				t.Errorf("Normalize(%q) again = %q, %v", got, again, err)
			}
		})
	}
}

func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"alice@example.com", "a\r\nb", "{3}", "ÄB", "\xff"} {
		f.Add(s, "example.com")
	}
	f.Fuzz(func(t *testing.T, in, domain string) {
		got, err := Normalize(in, domain)
		if err != nil {
			if !errors.Is(err, ErrInvalidUser) || got != "" {
				t.Fatalf("Normalize(%q, %q) = %q, %v", in, domain, got, err)
			}
			return
		}
		if len(got) == 0 || len(got) > MaxUserLen || strings.ContainsAny(got, forbidden+" \r\n\x00") {
			t.Fatalf("Normalize(%q, %q) = %q", in, domain, got)
		}
		if again, err := Normalize(got, domain); err != nil || again != got {
			t.Fatalf("not idempotent: %q -> %q, %v", got, again, err)
		}
	})
}

func BenchmarkNormalize(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Normalize("Alice.Smith", "example.com"); err != nil {
			b.Fatal(err)
		}
	}
}
