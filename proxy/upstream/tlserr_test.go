package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	ptls "github.com/portico-mail/portico/tls"
)

func TestTLSReason(t *testing.T) {
	verify := func(err error) error { return &tls.CertificateVerificationError{Err: err} }
	for _, tt := range []struct {
		err  error
		want string
	}{
		{verify(x509.UnknownAuthorityError{}), "unknown authority"},
		{verify(x509.HostnameError{Host: "x"}), "name mismatch"},
		{verify(x509.CertificateInvalidError{Reason: x509.Expired}), "expired"},
		{verify(x509.CertificateInvalidError{Reason: x509.NotAuthorizedToSign}), "invalid certificate"},
		{fmt.Errorf("x: %w", ptls.ErrPinMismatch), ""},
		{tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, "does not speak TLS"},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")}, "rejected by the backend"},
		{errors.New("EOF"), ""},
	} {
		got := tlsReason(tt.err)
		if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
			t.Errorf("tlsReason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
