package jormungandr

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/nats-io/nats.go"
)

// wsRedialTimeout bounds one redial of a reconnecting WebSocket.
const wsRedialTimeout = 30 * time.Second

func (s *Service) serveWSConnect(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	req, err := DecodeWSConnectRequest(r.Data())
	if err != nil {
		return nil, nil, err
	}
	if _, err := s.allowTarget(req.URL, wsSchemes, req.Hosts); err != nil {
		return nil, nil, err
	}
	if err := s.handles.reserve(); err != nil {
		return nil, nil, err
	}
	c, err := s.dialWS(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	w := &wsConn{s: s, req: req, c: c, msgs: make(chan Message, s.cfg.Handles.Buffer), dead: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	go w.pump(c)
	return s.register(w)
}

// dialWS opens a WebSocket through the policy-checking transport. It
// follows no redirects.
func (s *Service) dialWS(ctx context.Context, req WSConnectRequest) (*websocket.Conn, error) {
	what := "websocket " + req.URL
	h := http.Header{}
	for k, v := range req.Headers {
		h.Set(k, v)
	}
	c, resp, err := websocket.Dial(ctx, req.URL, &websocket.DialOptions{
		HTTPClient: &http.Client{
			Transport: s.wsTransport,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return fault.New(fault.FailedPrecondition, "%s: the server redirects; WebSocket redirects are not followed", what)
			},
		},
		HTTPHeader: h,
	})
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		return nil, netError(ctx, err, what)
	}
	c.SetReadLimit(int64(s.cfg.Handles.MaxMessageBytes))
	return c, nil
}

// wsConn is a held WebSocket. A pump goroutine reads it into msgs, so that
// a receive that times out leaves the connection intact.
type wsConn struct {
	s      *Service
	req    WSConnectRequest
	msgs   chan Message
	dead   chan struct{} // closed, with err set, once the connection is gone for good
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	c       *websocket.Conn
	err     error
	closing bool
}

var _ conn = (*wsConn)(nil)

func (w *wsConn) kind() string { return "ws" }

func (w *wsConn) pump(c *websocket.Conn) {
	for {
		typ, data, err := c.Read(w.ctx)
		if err != nil {
			if w.isClosing() {
				w.die(fault.New(fault.FailedPrecondition, "websocket %s is closed", w.req.URL))
				return
			}
			if !w.req.Reconnect || w.s.cfg.Handles.MaxReconnects == 0 {
				w.die(fault.Wrap(fault.Unavailable, err, "websocket %s: connection lost: %v", w.req.URL, err))
				return
			}
			if c = w.redial(err); c == nil {
				return
			}
			continue
		}
		select {
		case w.msgs <- Message{Data: data, Binary: typ == websocket.MessageBinary}:
		case <-w.ctx.Done():
		}
	}
}

// redial reconnects with exponential backoff and jitter, up to
// MaxReconnects attempts; it returns nil, the connection dead, when they
// all fail or the connection is closed meanwhile.
func (w *wsConn) redial(cause error) *websocket.Conn {
	cfg := w.s.cfg.Handles
	backoff := cfg.ReconnectMin
	last := cause
	for range cfg.MaxReconnects {
		// Equal jitter: half the backoff fixed, half random, so replicas
		// that lost a server together do not redial in lockstep.
		sleep := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-time.After(sleep):
		case <-w.ctx.Done():
			w.die(fault.New(fault.FailedPrecondition, "websocket %s is closed", w.req.URL))
			return nil
		}
		ctx, cancel := context.WithTimeout(w.ctx, wsRedialTimeout)
		c, err := w.s.dialWS(ctx, w.req)
		cancel()
		if err == nil {
			w.mu.Lock()
			closing := w.closing
			if !closing {
				w.c = c
			}
			w.mu.Unlock()
			if closing {
				_ = c.CloseNow()
				w.die(fault.New(fault.FailedPrecondition, "websocket %s is closed", w.req.URL))
				return nil
			}
			w.s.log.Debug("websocket reconnected", logKeyURL, w.req.URL)
			return c
		}
		last = err
		backoff = min(backoff*2, cfg.ReconnectMax)
	}
	w.die(fault.Wrap(fault.Unavailable, last, "websocket %s: connection lost; %d reconnects failed, the last: %s",
		w.req.URL, cfg.MaxReconnects, fault.MessageOf(last)))
	return nil
}

func (w *wsConn) isClosing() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closing
}

// die records why the connection is gone, once.
func (w *wsConn) die(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
		close(w.dead)
	}
}

func (w *wsConn) current() (*websocket.Conn, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.c, w.err
}

func (w *wsConn) send(ctx context.Context, data []byte, binary bool) error {
	c, err := w.current()
	if err != nil {
		return err
	}
	typ := websocket.MessageText
	if binary {
		typ = websocket.MessageBinary
	}
	if err := c.Write(ctx, typ, data); err != nil {
		if ctx.Err() != nil {
			return fault.Wrap(fault.DeadlineExceeded, err, "websocket %s: send: deadline exceeded", w.req.URL)
		}
		return fault.Wrap(fault.Unavailable, err, "websocket %s: send: %v", w.req.URL, err)
	}
	return nil
}

func (w *wsConn) receive(ctx context.Context, wait time.Duration) (*Message, error) {
	return receiveFrom(ctx, wait, w.msgs, w.dead, func() error {
		_, err := w.current()
		return err
	})
}

// receiveFrom waits up to wait for a message on msgs; once dead is closed
// the messages still buffered are returned before gone's error.
func receiveFrom(ctx context.Context, wait time.Duration, msgs <-chan Message, dead <-chan struct{}, gone func() error) (*Message, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case m := <-msgs:
		return &m, nil
	case <-dead:
		select {
		case m := <-msgs:
			return &m, nil
		default:
			return nil, gone()
		}
	case <-timer.C:
		return nil, nil
	case <-ctx.Done():
		return nil, nil
	}
}

func (w *wsConn) publish(context.Context, string, []byte, int, bool) error {
	return errUnsupported("publish", "ws")
}

func (w *wsConn) subscribe(context.Context, string, int) error {
	return errUnsupported("subscribe", "ws")
}

func (w *wsConn) close() {
	w.mu.Lock()
	w.closing = true
	c := w.c
	w.mu.Unlock()
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil && !errors.Is(err, context.Canceled) {
		_ = c.CloseNow()
	}
	w.cancel()
}
