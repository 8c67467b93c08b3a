package jormungandr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/nats-io/nats.go"
)

// Schemes and their default ports.
var (
	httpSchemes = map[string]int{"http": 80, "https": 443}
	wsSchemes   = map[string]int{"ws": 80, "wss": 443}
	mqttSchemes = map[string]int{"tcp": 1883, "mqtt": 1883, "ssl": 8883, "tls": 8883, "mqtts": 8883}
)

// errTooLarge marks a response body over the cap.
var errTooLarge = errors.New("response body too large")

// allowTarget parses rawURL and checks it against the policy and, when
// hosts is not empty, against the hosts the caller may reach.
func (s *Service) allowTarget(rawURL string, schemes map[string]int, hosts []string) (target, error) {
	t, err := parseTarget(rawURL, schemes)
	if err != nil {
		return t, err
	}
	if err := s.pol.check(t); err != nil {
		return t, err
	}
	return t, checkGranted(t, hosts)
}

// checkGranted refuses t unless hosts is empty or lists t's host or "*".
func checkGranted(t target, hosts []string) error {
	if len(hosts) == 0 {
		return nil
	}
	for _, h := range hosts {
		if h == "*" || strings.TrimSuffix(strings.ToLower(h), ".") == t.host {
			return nil
		}
	}
	return fault.New(fault.PermissionDenied, "host %q is not among the hosts the tool may reach", t.host)
}

func (s *Service) serveHTTP(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	req, err := DecodeHTTPRequest(r.Data())
	if err != nil {
		return nil, nil, err
	}
	resp, err := s.doHTTP(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	b, err := json.Marshal(resp)
	return b, nil, err
}

// doHTTP performs req; each redirect is checked like the first request.
func (s *Service) doHTTP(ctx context.Context, req HTTPRequest) (HTTPResponse, error) {
	what := req.Method + " " + req.URL
	if _, err := s.allowTarget(req.URL, httpSchemes, req.Hosts); err != nil {
		return HTTPResponse{}, err
	}
	if len(req.Body) > s.cfg.HTTP.MaxRequestBytes {
		return HTTPResponse{}, fault.New(fault.ResourceExhausted, "%s: request body is %d bytes: at most %d", what, len(req.Body), s.cfg.HTTP.MaxRequestBytes)
	}
	var body io.Reader
	if req.Body != nil {
		body = bytes.NewReader(req.Body)
	}
	hreq, err := http.NewRequestWithContext(ctx, req.Method, req.URL, body)
	if err != nil {
		return HTTPResponse{}, fault.New(fault.InvalidArgument, "%s: %v", what, unwrapURLError(err))
	}
	for k, v := range req.Headers {
		if strings.EqualFold(k, "Host") {
			return HTTPResponse{}, fault.New(fault.InvalidArgument, "%s: header Host is taken from the url", what)
		}
		hreq.Header.Set(k, v)
	}
	if hreq.Header.Get("User-Agent") == "" {
		hreq.Header.Set("User-Agent", s.cfg.HTTP.UserAgent)
	}
	client := &http.Client{
		Transport: s.httpTransport,
		CheckRedirect: func(next *http.Request, via []*http.Request) error {
			if len(via) > s.cfg.HTTP.MaxRedirects {
				return fault.New(fault.FailedPrecondition, "%s: more than %d redirects", what, s.cfg.HTTP.MaxRedirects)
			}
			if _, err := s.allowTarget(next.URL.String(), httpSchemes, req.Hosts); err != nil {
				return fault.New(fault.PermissionDenied, "%s: redirect to %s refused: %s", what, next.URL.Redacted(), fault.MessageOf(err))
			}
			return nil
		},
	}
	resp, err := client.Do(hreq)
	if err != nil {
		return HTTPResponse{}, netError(ctx, err, what)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(s.cfg.HTTP.MaxResponseBytes)+1))
	if err == nil && len(data) > s.cfg.HTTP.MaxResponseBytes {
		err = errTooLarge
	}
	if errors.Is(err, errTooLarge) {
		return HTTPResponse{}, fault.New(fault.ResourceExhausted, "%s: response body is over %d bytes", what, s.cfg.HTTP.MaxResponseBytes)
	}
	if err != nil {
		return HTTPResponse{}, netError(ctx, err, what)
	}
	out := HTTPResponse{Status: resp.StatusCode, Headers: make(map[string]string, len(resp.Header)), Body: data, URL: resp.Request.URL.Redacted()}
	for k, vs := range resp.Header {
		out.Headers[strings.ToLower(k)] = strings.Join(vs, ", ")
	}
	return out, nil
}

// netError maps a failed network operation on what: the policy's own
// refusals pass through, the end of ctx is DEADLINE_EXCEEDED, anything else
// UNAVAILABLE with the cause.
func netError(ctx context.Context, err error, what string) error {
	var fe *fault.Error
	switch {
	case errors.As(err, &fe):
		return fe
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return fault.Wrap(fault.DeadlineExceeded, err, "%s: no answer before the deadline", what)
	}
	return fault.Wrap(fault.Unavailable, err, "%s: %v", what, unwrapURLError(err))
}

// errUnsupported is the error of an operation a connection kind lacks.
func errUnsupported(op, kind string) error {
	return fault.New(fault.InvalidArgument, "%s is not an operation of %s connections", op, kind)
}

// fmtHandle names a handle in errors.
func fmtHandle(kind, id string) string { return fmt.Sprintf("%s connection %s", kind, id) }
