package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Server is the HTTP listener of a Registry's Handler.
type Server struct {
	lis  net.Listener
	srv  *http.Server
	done chan struct{}
}

// Listen opens addr (host:port; port 0 picks a free one) at once, so a busy
// port fails start-up rather than the first scrape, and serves r.Handler()
// on it in the background until Close.
func Listen(addr string, r *Registry, log *slog.Logger) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	s := &Server{
		lis: lis,
		srv: &http.Server{
			Handler:           r.Handler(),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", lis.Addr().String(), "err", err)
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// URL is the server's base URL, such as http://127.0.0.1:9464.
func (s *Server) URL() string { return "http://" + s.lis.Addr().String() }

// Close stops the server, letting scrapes in progress finish for up to a
// second. It is safe to call more than once.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.srv.Close()
	}
	return err
}
