// The cookbook's Go client: net.Dialer with a Control function that sets TCP_USER_TIMEOUT
// and keepalive on the socket before it connects, against the lab's echo server.
//
//	client busy|idle defaults|recommended
//
// Go 1.19 (Debian bookworm) has no KeepAliveConfig (Go 1.23): Dialer.KeepAlive sets the
// idle time and the interval to one value and leaves the probe count to the kernel, and it
// is applied after Control, so the recipe turns it off (-1) and sets all of it in Control.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

const (
	tcpUserTimeout  = 0x12 // TCP_USER_TIMEOUT, linux/tcp.h (not in package syscall)
	userTimeoutMs   = 5000
	keepaliveIdleS  = 10
	keepaliveIntvlS = 1
	keepaliveCount  = 3
	requestInterval = time.Second
)

// recommended is the recipe: every option set on the socket before connect.
func recommended() *net.Dialer {
	return &net.Dialer{
		KeepAlive: -1, // Go's own keepalive would overwrite the idle time and interval
		Control: func(network, address string, raw syscall.RawConn) error {
			var setErr error
			err := raw.Control(func(fd uintptr) {
				for _, option := range [][3]int{
					{syscall.IPPROTO_TCP, tcpUserTimeout, userTimeoutMs},
					{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, keepaliveIdleS},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepaliveIntvlS},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepaliveCount},
				} {
					if setErr == nil {
						setErr = syscall.SetsockoptInt(int(fd), option[0], option[1], option[2])
					}
				}
			})
			if err != nil {
				return err
			}
			return setErr
		},
	}
}

func echo(conn net.Conn, reader *bufio.Reader) error {
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return err
	}
	_, err := reader.ReadString('\n')
	return err
}

func run(mode, settings string) error {
	dialer := &net.Dialer{} // the defaults: keepalive every 15 s (idle 15 s, interval 15 s)
	if settings == "recommended" {
		dialer = recommended()
	}
	address := net.JoinHostPort(os.Getenv("TCPECHO_LAB_HOST"), os.Getenv("TCPECHO_LAB_PORT"))
	conn, err := dialer.Dial("tcp", address)
	if err != nil {
		return err
	}
	defer conn.Close()
	reader := bufio.NewReader(conn)
	if err := echo(conn, reader); err != nil {
		return err
	}
	if mode == "idle" {
		_, err := reader.ReadString('\n') // a reply that never comes
		return err
	}
	for {
		time.Sleep(requestInterval)
		if err := echo(conn, reader); err != nil {
			return err
		}
	}
}

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "busy" && os.Args[1] != "idle") ||
		(os.Args[2] != "defaults" && os.Args[2] != "recommended") {
		fmt.Fprintln(os.Stderr, "usage: client busy|idle defaults|recommended")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "connection failed:", err)
		os.Exit(1)
	}
}
