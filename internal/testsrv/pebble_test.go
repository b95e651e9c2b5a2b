package testsrv

import (
	"encoding/json"
	"testing"
)

func TestStartPebble(t *testing.T) {
	p := StartPebble(t, PebbleOptions{CertificateValidityPeriod: 60})
	resp, err := p.HTTPClient().Get(p.DirectoryURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var dir struct{ NewOrder string }
	if err := json.NewDecoder(resp.Body).Decode(&dir); err != nil || dir.NewOrder == "" {
		t.Fatalf("directory: %+v, %v", dir, err)
	}
	if p.Roots(t) == nil {
		t.Fatal("no roots")
	}
	if p.HTTPPort == 0 || p.TLSPort == 0 || p.HTTPPort == p.TLSPort {
		t.Errorf("ports %d, %d", p.HTTPPort, p.TLSPort)
	}
}
