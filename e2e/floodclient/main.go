// Command floodclient is the end-to-end tests' unprivileged attacker: it
// tries to hold -conns idle TCP connections to -addr, dialling again
// whenever the server drops one, and prints what it holds every second
// until it is killed. It sends nothing: the cheapest way to hold a slot.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9721", "target")
	conns := flag.Int("conns", 30000, "connections to hold")
	sources := flag.Int("sources", 8, "source addresses 127.0.0.2… to spread the ports over")
	flag.Parse()

	var held, dropped, failed atomic.Int64
	// Bounded concurrent dials: a SYN the full backlog drops is retried by
	// the kernel for seconds, and thousands of those at once only load the
	// machine the test runs on.
	dialing := make(chan struct{}, 1024)
	for i := range *conns {
		go func() {
			src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%*sources))}
			d := net.Dialer{LocalAddr: src, Timeout: 3 * time.Second}
			buf := make([]byte, 1)
			for {
				dialing <- struct{}{}
				c, err := d.DialContext(context.Background(), "tcp", *addr)
				<-dialing
				if err != nil {
					failed.Add(1)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				held.Add(1)
				_, _ = c.Read(buf) // until the server drops us
				c.Close()
				held.Add(-1)
				dropped.Add(1)
			}
		}()
	}
	for range time.Tick(time.Second) {
		fmt.Fprintf(os.Stdout, "uid %d held %d dropped %d failed %d\n", os.Getuid(), held.Load(), dropped.Load(), failed.Load())
	}
}
