// The cookbook's go-sql-driver/mysql client (Debian's golang-github-go-sql-driver-mysql-dev),
// through database/sql, against the lab's MariaDB preset (any user, no password).
//
//	client busy|idle defaults|recommended
//
// busy: SELECT 1 every second on a pool of one connection; idle: SELECT SLEEP(3600), a
// query waiting for its answer. The driver's own dialer is a net.Dialer with Go's default
// keepalive (idle and interval 15 s, the kernel's count); the recommended settings bring a
// dialer of their own (mysql.RegisterDialContext) whose Control sets TCP_USER_TIMEOUT and
// keepalive before the connect, with KeepAlive -1: in Go 1.19 a KeepAlive >= 0 is applied
// after Control and would set the idle time and the interval back to one value.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

const (
	tcpUserTimeout  = 0x12 // TCP_USER_TIMEOUT, linux/tcp.h (not in package syscall)
	userTimeoutMs   = 5000
	keepaliveIdleS  = 10
	keepaliveIntvlS = 1
	keepaliveCount  = 3
	requestInterval = time.Second
	// The network name the recommended DSN dials through (mysql.RegisterDialContext).
	tunedNetwork = "tuned-tcp"
)

// setOptions sets TCP_USER_TIMEOUT and keepalive on the socket before it connects.
func setOptions(network, address string, raw syscall.RawConn) error {
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
}

// open is the pool: the driver's defaults, or the recipe (a dial timeout in the DSN and the
// tuned dialer).
func open(address, settings string) (*sql.DB, error) {
	config := mysql.NewConfig()
	config.User = "lab"
	config.Net = "tcp"
	config.Addr = address
	if settings == "recommended" {
		dialer := &net.Dialer{KeepAlive: -1, Control: setOptions}
		mysql.RegisterDialContext(tunedNetwork, func(ctx context.Context, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", addr)
		})
		config.Net = tunedNetwork
		config.Timeout = 5 * time.Second // the DSN's timeout=5s: each dial
	}
	db, err := sql.Open("mysql", config.FormatDSN())
	if err != nil {
		return nil, err
	}
	// One connection, used for every query. SetConnMaxIdleTime and SetConnMaxLifetime close
	// only connections the pool holds unused: not one a query is waiting on (docs/cookbook.md).
	db.SetMaxOpenConns(1)
	return db, nil
}

func run(mode, settings string) error {
	address := net.JoinHostPort(os.Getenv("TCPECHO_LAB_HOST"), os.Getenv("TCPECHO_LAB_PORT"))
	db, err := open(address, settings)
	if err != nil {
		return err
	}
	defer db.Close()
	var answer int64
	if mode == "idle" {
		return db.QueryRow("SELECT SLEEP(3600)").Scan(&answer) // an answer an hour away
	}
	for {
		if err := db.QueryRow("SELECT 1").Scan(&answer); err != nil {
			return err
		}
		time.Sleep(requestInterval)
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
