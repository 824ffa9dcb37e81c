package bench

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// throttle is a TCP proxy in front of a server (the S3 server, for Spread)
// that caps the bytes per second the server sends, over all connections
// together, with one token bucket: what a bucket's per-prefix throughput or
// an egress budget looks like to a fleet. It counts the bytes each way.
type throttle struct {
	ln     net.Listener
	target string
	lim    *rate.Limiter // nil: no cap

	down atomic.Int64 // server → clients
	up   atomic.Int64 // clients → server

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// throttleChunk is how many bytes a connection copies per token wait; the
// bucket's burst.
const throttleChunk = 64 << 10

// startThrottle listens on a free loopback port and forwards each
// connection to target, sending at most bps bytes per second back to the
// clients in all (bps ≤ 0: no cap).
func startThrottle(target string, bps float64) (*throttle, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &throttle{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	if bps > 0 {
		p.lim = rate.NewLimiter(rate.Limit(bps), throttleChunk)
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's address (host:port).
func (p *throttle) Addr() string { return p.ln.Addr().String() }

// reset zeroes the byte counters.
func (p *throttle) reset() {
	p.down.Store(0)
	p.up.Store(0)
}

// Close stops the proxy and closes every connection through it.
func (p *throttle) Close() {
	p.cancel()
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *throttle) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *throttle) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *throttle) serve(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	p.track(client, true)
	p.track(server, true)
	defer func() {
		client.Close()
		server.Close()
		p.track(client, false)
		p.track(server, false)
	}()
	done := make(chan struct{}, 2)
	go func() {
		n, _ := io.Copy(server, client)
		p.up.Add(n)
		if tc, ok := server.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		p.copyDown(client, server)
		client.Close() // the server is done: so is the client's read
		done <- struct{}{}
	}()
	<-done
	<-done
}

// copyDown copies server → client, a chunk at a time, each after the
// bucket allows it.
func (p *throttle) copyDown(client, server net.Conn) {
	buf := make([]byte, throttleChunk)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			if p.lim != nil {
				if werr := p.lim.WaitN(p.ctx, n); werr != nil {
					return
				}
			}
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
			p.down.Add(int64(n))
		}
		if err != nil {
			return // EOF or a broken connection: either way, done
		}
	}
}
