// Command benchkit is what make bench (load/compare) needs beside wrk and pgbench:
//
//	benchkit delay -listen ADDR -to ADDR -each-way 500us
//	    a TCP proxy that holds every byte for each-way in each direction, as a network
//	    between a server and its database does (Neon: about a millisecond a round trip)
//	benchkit follow -base URL -tokens FILE -n N
//	    holds an event stream open for each of the first N users of a tokens file, as the
//	    browsers of N users following their tasks do, until it is stopped
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: benchkit delay|follow ...")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	switch os.Args[1] {
	case "delay":
		listen := flags.String("listen", "127.0.0.1:55434", "address to listen on")
		to := flags.String("to", "127.0.0.1:55432", "address to forward to")
		each := flags.Duration("each-way", 500*time.Microsecond, "delay added in each direction")
		flags.Parse(os.Args[2:])
		delay(ctx, *listen, *to, *each)
	case "follow":
		base := flags.String("base", "http://127.0.0.1:18080", "the service")
		tokens := flags.String("tokens", "tokens.txt", `"<user_id> <token>" lines`)
		n := flags.Int("n", 200, "streams to open, one per user")
		flags.Parse(os.Args[2:])
		follow(ctx, *base, *tokens, *n)
	default:
		log.Fatalf("unknown command %q", os.Args[1])
	}
}

func delay(ctx context.Context, listen, to string, each time.Duration) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatal(err)
	}
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", to)
		if err != nil {
			in.Close()
			continue
		}
		go pump(in, out, each)
		go pump(out, in, each)
	}
}

// pump copies src to dst, each chunk written each after it was read, in order.
func pump(src, dst net.Conn, each time.Duration) {
	type chunk struct {
		at   time.Time
		data []byte
	}
	chunks := make(chan chunk, 4096)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				chunks <- chunk{time.Now(), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		time.Sleep(time.Until(c.at.Add(each)))
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	src.Close()
	dst.Close()
}

func follow(ctx context.Context, base, tokens string, n int) {
	f, err := os.Open(tokens)
	if err != nil {
		log.Fatal(err)
	}
	var events, open atomic.Int64
	sc := bufio.NewScanner(f)
	for i := 0; i < n && sc.Scan(); i++ {
		user, token, _ := strings.Cut(sc.Text(), " ")
		go func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/"+user+"/events?access_token="+token, nil)
				res, err := http.DefaultClient.Do(req)
				if err != nil || res.StatusCode != http.StatusOK {
					time.Sleep(time.Second)
					continue
				}
				open.Add(1)
				lines := bufio.NewScanner(res.Body)
				for lines.Scan() {
					if strings.HasPrefix(lines.Text(), "event: task.") {
						events.Add(1)
					}
				}
				res.Body.Close()
				open.Add(-1)
			}
		}()
	}
	<-ctx.Done()
	fmt.Fprintf(os.Stderr, "benchkit follow: %d streams open at the end, %d events received\n", open.Load(), events.Load())
}
