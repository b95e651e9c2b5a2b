// Package wire reads the IMAP commands a client may send before it has
// logged in, and writes the few responses a pre-auth front door needs.
//
// Typical use, in a session that owns the connection's buffers:
//
//	br := bufio.NewReader(conn)
//	bw := bufio.NewWriter(conn)
//	dec := wire.NewDecoder(br)
//	dec.Continue = func() error { // a synchronizing literal was accepted
//		bw.WriteString("+ Ready\r\n")
//		return bw.Flush()
//	}
//	for {
//		cmd, err := dec.ReadCommand()
//		var werr *wire.Error
//		if errors.As(err, &werr) {
//			wire.WriteStatus(bw, werr.Tag, imap.StatusResponseTypeBad, werr.Code, werr.Text)
//			bw.Flush()
//			if werr.Fatal {
//				return // cannot resynchronise: close the connection
//			}
//			continue // positioned at the start of the next command
//		}
//		if err != nil {
//			return // I/O error: EOF, deadline, reset
//		}
//		switch cmd.Name {
//		case "LOGIN":
//			user, _ := cmd.Args[0].AString()
//			...
//		}
//	}
//
// The Decoder only consumes from the *bufio.Reader the bytes that belong to
// the command it returns, so after STARTTLS or a successful login the
// session can hand br's buffered bytes to the TLS layer or the backend.
//
// The grammar is the subset of RFC 3501/9051 that is valid before
// authentication: a tag, a command name (upper-cased) and arguments that
// are atoms, NIL, quoted strings, literals ({n} and LITERAL- {n+}) and
// parenthesised lists. Everything is bounded: the command line, each
// literal, the literals of one command, the list depth and the number of
// arguments. Literals are refused for every command but those that
// AllowLiteral accepts, and a refused synchronizing literal never gets a
// "+" continuation, so the client never sends its data. Error texts are
// fixed strings that never echo client input.
//
// Bare LF is accepted as a line terminator, as Dovecot and go-imap do.
//
// The encoding helpers (AppendStatus, AppendAString, AppendString,
// AppendQuoted, NeedsLiteral, AppendLiteralHeader) never let a value end a
// line early: anything that cannot be quoted is sent as a literal or, for
// status texts, has its CR, LF and NUL bytes removed.
package wire
