// The cookbook's Go HTTP/2 client: golang.org/x/net/http2's Transport (Debian's
// golang-golang-x-net-dev), cleartext with prior knowledge (h2c) against the lab's http2
// preset, every request on one connection.
//
//	client busy|idle defaults|recommended
//
// busy: GET / every second; idle: GET /wait, an answer an hour away. The recommended
// settings are the kubelet's fix (kubernetes 87615, golang/go 31643): ReadIdleTimeout sends
// a PING after that long without a frame read, and PingTimeout closes the connection when
// its answer does not come in time. Without ReadIdleTimeout the Transport sends no pings;
// its dialer, a net.Dialer like tls.Dial's, carries Go's default keepalive (15 s).
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"golang.org/x/net/http2"
)

const requestInterval = time.Second

// transport is HTTP/2 over plain TCP: AllowHTTP, and a "TLS" dial that dials TCP only.
func transport(settings string) *http2.Transport {
	dialer := &net.Dialer{} // as tls.Dial's: Go's default keepalive, 15 s
	t := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
	}
	if settings == "recommended" {
		t.ReadIdleTimeout = 10 * time.Second // a PING after 10 s without a frame read
		t.PingTimeout = 5 * time.Second      // closed when its ACK has not come in 5 s
	}
	return t
}

func get(client *http.Client, url string) error {
	response, err := client.Get(url)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	if _, err := io.Copy(io.Discard, response.Body); err != nil {
		return err
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, response.Status)
	}
	return nil
}

func run(mode, settings string) error {
	address := net.JoinHostPort(os.Getenv("TCPECHO_LAB_HOST"), os.Getenv("TCPECHO_LAB_PORT"))
	client := &http.Client{Transport: transport(settings)} // no Timeout: none by default
	if mode == "idle" {
		return get(client, "http://"+address+"/wait")
	}
	for {
		if err := get(client, "http://"+address+"/"); err != nil {
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
