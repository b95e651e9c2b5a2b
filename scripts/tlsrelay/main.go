// Command tlsrelay is the floor Portico is measured against in
// scripts/compare-peers.sh: the least a Go program can do to put TLS in
// front of an IMAP server. It terminates TLS with crypto/tls, dials one
// backend and copies bytes both ways with io.Copy, and nothing else: no
// IMAP, no login, no routing, no limits. Its CPU per login session is
// what Go's TLS, its runtime and the kernel cost on the machine; whatever
// Portico spends above it is Portico's own.
//
//	go run ./scripts/tlsrelay -listen 127.0.0.1:9993 -backend 127.0.0.1:143 -cert cert.pem -key key.pem
package main

import (
	"crypto/tls"
	"flag"
	"io"
	"log"
	"net"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9993", "TLS listener `address`")
	backend := flag.String("backend", "", "backend `host:port` (plain IMAP)")
	certFile := flag.String("cert", "", "certificate `file` (PEM)")
	keyFile := flag.String("key", "", "key `file` (PEM)")
	alpn := flag.String("alpn", "imap", "ALPN `protocol` (imap, pop3)")
	flag.Parse()
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatal(err)
	}
	// Portico's policy where it costs CPU: its ALPN, Go's default curves.
	ln, err := tls.Listen("tcp", *listen, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{*alpn}})
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go relay(c, *backend)
	}
}

// relay owns c and the backend connection it dials, and closes both.
func relay(c net.Conn, backend string) {
	defer c.Close()
	d := net.Dialer{KeepAlive: -1}
	b, err := d.Dial("tcp", backend)
	if err != nil {
		return
	}
	defer b.Close()
	go copyToBackend(b, c)
	io.Copy(c, b)
}

func copyToBackend(b, c net.Conn) {
	io.Copy(b, c)
	b.(*net.TCPConn).CloseWrite()
}
