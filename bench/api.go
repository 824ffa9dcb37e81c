package bench

import (
	"net"
	"net/http"
	"time"

	"github.com/genfleet/genfleet/scheduler"
)

// serveAPI starts a scheduler of cfg as the scheduler role runs it (models
// checked at submit, routing on) and serves its API on a loopback port. It
// returns the scheduler, the API's host:port and the function that stops
// both.
func serveAPI(cfg scheduler.Config) (sched *scheduler.Server, addr string, stop func(), err error) {
	cfg.CheckModels, cfg.Routing = true, scheduler.Policy{Enabled: true}
	if sched, err = scheduler.New(cfg); err != nil {
		return nil, "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		sched.Close()
		return nil, "", nil, err
	}
	hs := &http.Server{Handler: sched.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return sched, ln.Addr().String(), func() { hs.Close(); sched.Close() }, nil
}
