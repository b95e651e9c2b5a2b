package proxy

import (
	"slices"
	"testing"
)

// The boundaries a pop3Framer finds in a backend's stream do not depend
// on how the stream and the client's commands are cut into chunks.
func TestPOP3FramerBoundaries(t *testing.T) {
	cmds := "RETR 1\r\nlist 1\r\nUIDL\r\nNOOP\r\nTOP 1 0\r\nCAPA\r\nDELE 9\r\nRETR 2\r\nLIST\r\n"
	parts := []string{
		"+OK 30 octets\r\nSubject: x\r\n\r\n..dot\r\n...\r\n.\r\n", // RETR 1: stuffed lines ".dot", ".."
		"+OK 1 30\r\n",                        // LIST 1
		"+OK\r\n1 a\r\n2 b\r\n.\r\n",          // UIDL
		"+OK\r\n",                             // NOOP
		"+OK\r\nSubject: x\r\n\r\n.\r\n",      // TOP 1 0
		"+OK\r\nTOP\r\nUIDL\r\n.\r\n",         // CAPA
		"-ERR [SYS/TEMP] no such message\r\n", // DELE 9
		"-ERR no such message\r\n",            // RETR 2 refused: no body
		"+OK\n1 30\n.\n",                      // LIST, bare LFs
	}
	var stream string
	var want []int
	for _, p := range parts {
		stream += p
		want = append(want, len(stream))
	}
	for cut := 0; cut <= len(cmds); cut++ {
		for step := 1; step <= len(stream); step += 3 {
			var f pop3Framer
			f.feedCommands([]byte(cmds[:cut]))
			f.feedCommands([]byte(cmds[cut:]))
			var got []int
			pos := 0
			for pos < len(stream) {
				end := min(pos+step, len(stream))
				chunk := []byte(stream[pos:end])
				for len(chunk) > 0 {
					k := f.advance(chunk, true)
					if k == 0 {
						k = f.advance(chunk[:1], false) // past the boundary
						pos++
						chunk = chunk[1:]
						continue
					}
					pos += k
					chunk = chunk[k:]
					if f.atBoundary() {
						got = append(got, pos)
					}
				}
			}
			got = slices.Compact(got)
			if !slices.Equal(got, want) {
				t.Fatalf("commands cut at %d, stream in chunks of %d: boundaries %v, want %v", cut, step, got, want)
			}
		}
	}
}

func TestPOP3Bye(t *testing.T) {
	if got := string(pop3Bye(byeLine("moving you", ""))); got != "-ERR [SYS/TEMP] moving you\r\n" {
		t.Errorf("pop3Bye: %q", got)
	}
}

// Whatever the two streams hold, the framer never panics and ends in the
// same state however the backend's stream is cut.
func FuzzPOP3Framer(f *testing.F) {
	f.Add([]byte("RETR 1\r\nLIST\r\n"), []byte("+OK\r\n..x\r\n.\r\n+OK\r\n1 2\r\n.\r\n"), uint8(3))
	f.Add([]byte("CAPA\nNOOP\n"), []byte("-ERR no\n+OK\n"), uint8(1))
	f.Fuzz(func(t *testing.T, cmds, stream []byte, step uint8) {
		var whole, cut pop3Framer
		whole.feedCommands(cmds)
		cut.feedCommands(cmds)
		whole.advance(stream, false)
		n := int(step%32) + 1
		for i := 0; i < len(stream); i += n {
			cut.advance(stream[i:min(i+n, len(stream))], false)
		}
		if whole.atBoundary() != cut.atBoundary() || whole.body != cut.body || whole.queued != cut.queued {
			t.Fatalf("state differs with chunks of %d: boundary %v/%v, body %v/%v, queued %d/%d", n,
				whole.atBoundary(), cut.atBoundary(), whole.body, cut.body, whole.queued, cut.queued)
		}
	})
}
