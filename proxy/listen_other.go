//go:build !linux

package proxy

import "net"

func listenConfig() net.ListenConfig {
	return net.ListenConfig{KeepAliveConfig: clientKeepAlive}
}
