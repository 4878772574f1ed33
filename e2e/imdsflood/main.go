// Command imdsflood is the attempt benchmark's prober: run in a
// container's network namespace, it starts -rate TCP connections a second
// to -addr (a non-blocking connect sends the SYN, the socket is closed at
// once) for -for, and prints how many it started. Each is a new source
// port, as an SDK retrying in a loop would be.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	addr := flag.String("addr", "169.254.169.254:80", "target")
	rate := flag.Int("rate", 10000, "connections a second")
	dur := flag.Duration("for", 60*time.Second, "how long")
	flag.Parse()
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().Is4() {
		fmt.Fprintln(os.Stderr, "want an IPv4 address:port:", err)
		os.Exit(2)
	}
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	// Paced on the clock, not on ticks: a late tick catches up.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	end := start.Add(*dur)
	sent, failed := 0, 0
	for now := start; now.Before(end); now = <-tick.C {
		for due := int(now.Sub(start).Seconds() * float64(*rate)); sent+failed < due; {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				failed++
				continue
			}
			if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
				failed++
			} else {
				sent++
			}
			unix.Close(fd)
		}
	}
	fmt.Printf("sent %d failed %d in %v\n", sent, failed, *dur)
}
