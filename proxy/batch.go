package proxy

import (
	"crypto/tls"
	"net"
	"sync"
)

// batchConn sits under a client's tls.Conn. crypto/tls writes each record
// with its own system call; during a bulk write (a FETCH burst) batchConn
// collects the records of one tls.Conn.Write and sends them in one, which
// saves most of the proxy's write calls on downloads. Outside a batch it
// writes through.
type batchConn struct {
	net.Conn
	mu  sync.Mutex // guards buf: crypto/tls may write from the reading goroutine (KeyUpdate)
	buf *[]byte    // non-nil while batching
}

// batchMin is the smallest chunk worth batching: a write of one record or
// less gains nothing.
const batchMin = 16 << 10

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 4*spliceBufSize+1024); return &b }}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.buf != nil {
		*c.buf = append(*c.buf, p...)
		c.mu.Unlock()
		return len(p), nil
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// CloseWrite passes a half-close on to the TCP connection.
func (c *batchConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// batchFor returns the batchConn under a client connection whose TLS
// handshake is done, or nil. Batching during a handshake would hold back
// the handshake's own messages.
func batchFor(client net.Conn) *batchConn {
	tc, ok := client.(*tls.Conn)
	if !ok || !tc.ConnectionState().HandshakeComplete {
		return nil
	}
	bc, _ := tc.NetConn().(*batchConn)
	return bc
}

// writeTLS writes b to the client, in one system call when bc is set and
// b spans several TLS records.
func writeTLS(dst net.Conn, bc *batchConn, b []byte) (int, error) {
	if bc == nil || len(b) <= batchMin {
		return dst.Write(b)
	}
	bp := batchPool.Get().(*[]byte)
	*bp = (*bp)[:0]
	bc.mu.Lock()
	bc.buf = bp
	bc.mu.Unlock()
	n, err := dst.Write(b)
	bc.mu.Lock()
	bc.buf = nil
	bc.mu.Unlock()
	if len(*bp) > 0 {
		if _, werr := bc.Conn.Write(*bp); werr != nil && err == nil {
			err = werr
			n = 0 // nothing is known to have reached the client
		}
	}
	if cap(*bp) <= 4*(4*spliceBufSize+1024) { // keep the pool's buffers bounded
		batchPool.Put(bp)
	}
	return n, err
}
