package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"

	ptls "github.com/portico-mail/portico/tls"
)

// tlsReason names, for the log line an operator reads, why a TLS
// connection to a backend failed, as a prefix for the full error ("" when
// err is not a TLS failure it knows). crypto/tls's own texts are precise
// but buried under several layers; the prefix is stable and greppable.
func tlsReason(err error) string {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
		op       *net.OpError
	)
	switch {
	case errors.Is(err, ptls.ErrPinMismatch):
		return "" // its text says so already
	case errors.As(err, &unknown):
		return "certificate signed by an unknown authority: "
	case errors.As(err, &hostname):
		return "certificate name mismatch: "
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "certificate expired or not yet valid: "
	case errors.As(err, &invalid):
		return "invalid certificate: "
	case errors.As(err, &record):
		return "backend does not speak TLS: "
	case errors.As(err, &op) && op.Op == "remote error":
		// An alert from the backend, e.g. "certificate required" when it
		// wants a client certificate we did not send.
		return "rejected by the backend: "
	}
	return ""
}
