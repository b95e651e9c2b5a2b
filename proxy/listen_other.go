//go:build !linux

package proxy

import "net"

func listenConfig() net.ListenConfig {
	return net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{
		Enable: true, Idle: ClientKeepAliveIdle, Interval: ClientKeepAliveInterval, Count: ClientKeepAliveCount,
	}}
}
