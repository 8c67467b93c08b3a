package microsvc_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

func start(t *testing.T, nc *nats.Conn, eps ...microsvc.Endpoint) *microsvc.Service {
	t.Helper()
	svc, err := microsvc.Start(nc, microsvc.Config{Name: "svc", Version: "1.0.0"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	// AddEndpoints flushes: the server has every subscription, the
	// control verbs' included, before a test sends its first request.
	if err := svc.AddEndpoints(time.Second, eps...); err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestStopDrains: a request already running when Stop is called still gets
// its reply, and Stop waits for it.
func TestStopDrains(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	running := make(chan struct{})
	release := make(chan struct{})
	svc := start(t, nc, microsvc.Endpoint{Name: "slow", Subject: "svc.slow", Workers: 2, Queue: 2,
		Handler: func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
			close(running)
			<-release
			return []byte("finished"), nil, nil
		}})
	client := natstest.Connect(t, srv)
	reply := make(chan string, 1)
	go func() {
		m, err := client.Request("svc.slow", nil, 10*time.Second)
		if err != nil {
			reply <- "error: " + err.Error()
			return
		}
		reply <- string(m.Data)
	}()
	<-running
	stopped := make(chan error, 1)
	go func() { stopped <- svc.Stop(10 * time.Second) }()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while a request was running", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if got := <-reply; got != "finished" {
		t.Fatalf("reply: got %q, want finished", got)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	// Nothing answers any more.
	if _, err := client.Request("svc.slow", nil, time.Second); err == nil {
		t.Fatal("request answered after Stop")
	}
}

// TestStopCancelsPastTimeout: handlers that outlive the drain timeout see
// their context cancelled.
func TestStopCancelsPastTimeout(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	running := make(chan struct{})
	svc := start(t, nc, microsvc.Endpoint{Name: "stuck", Subject: "svc.stuck", Workers: 1,
		Handler: func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
			close(running)
			<-ctx.Done()
			return nil, nil, fault.New(fault.DeadlineExceeded, "cancelled")
		}})
	client := natstest.Connect(t, srv)
	if err := client.PublishRequest("svc.stuck", nats.NewInbox(), nil); err != nil {
		t.Fatal(err)
	}
	<-running
	if err := svc.Stop(20 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
}

func TestPanicIsInternalAndCounted(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	svc := start(t, nc, microsvc.Endpoint{Name: "bad", Subject: "svc.bad",
		Handler: func(context.Context, *microsvc.Request) ([]byte, nats.Header, error) { panic("oops") }})
	defer svc.Stop(time.Second)
	m, err := natstest.Connect(t, srv).Request("svc.bad", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(micro.ErrorCodeHeader); got != string(fault.Internal) {
		t.Fatalf("code: got %q, want INTERNAL", got)
	}
	if got := m.Header.Get(micro.ErrorHeader); got != "internal error" {
		t.Fatalf("message: got %q, want the generic text (no panic details)", got)
	}
	st := svc.Stats()
	if st.Endpoints[0].NumRequests != 1 || st.Endpoints[0].NumErrors != 1 {
		t.Fatalf("stats: got %+v", st.Endpoints[0])
	}
}

func TestControlVerbs(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	svc := start(t, nc, microsvc.Endpoint{Name: "echo", Subject: "svc.echo",
		Handler: func(_ context.Context, r *microsvc.Request) ([]byte, nats.Header, error) { return r.Data(), nil, nil }})
	defer svc.Stop(time.Second)
	client := natstest.Connect(t, srv)
	for _, verb := range []micro.Verb{micro.PingVerb, micro.InfoVerb, micro.StatsVerb} {
		for _, id := range []string{"", svc.ID()} {
			subj, err := micro.ControlSubject(verb, "svc", id)
			if err != nil {
				t.Fatal(err)
			}
			m, err := client.Request(subj, nil, 5*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", subj, err)
			}
			var ident micro.ServiceIdentity
			if err := json.Unmarshal(m.Data, &ident); err != nil || ident.Name != "svc" || ident.ID != svc.ID() {
				t.Fatalf("%s: got %s, %v", subj, m.Data, err)
			}
		}
	}
	info := svc.Info()
	if len(info.Endpoints) != 1 || info.Endpoints[0].Subject != "svc.echo" || info.Endpoints[0].QueueGroup != micro.DefaultQueueGroup {
		t.Fatalf("info endpoints: got %+v", info.Endpoints)
	}
}

// TestReplyHeader: a header set on one request's ReplyHeader is sent with
// that reply only, including an error reply, and never with the next
// request a worker serves.
func TestReplyHeader(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	for _, workers := range []int{1, 0} {
		svc := start(t, nc, microsvc.Endpoint{Name: "h", Subject: "svc.h", Workers: workers, Queue: 1,
			Handler: func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
				if len(r.Data()) == 0 {
					return []byte("plain"), nil, nil
				}
				h := r.ReplyHeader()
				if len(h) != 0 {
					return nil, nil, fault.New(fault.Internal, "reply header not empty: %v", h)
				}
				h.Set("X-Body", string(r.Data()))
				if string(r.Data()) == "fail" {
					return nil, h, fault.New(fault.InvalidArgument, "failed")
				}
				return []byte("ok"), h, nil
			}})
		client := natstest.Connect(t, srv)
		for _, body := range []string{"one", "", "fail", "two", "", "three"} {
			m, err := client.Request("svc.h", []byte(body), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Header.Get("X-Body"); got != body {
				t.Fatalf("workers %d, body %q: got X-Body %q, want %q", workers, body, got, body)
			}
			if code := m.Header.Get(micro.ErrorCodeHeader); (body == "fail") != (code == string(fault.InvalidArgument)) {
				t.Fatalf("workers %d, body %q: got error code %q", workers, body, code)
			}
		}
		if err := svc.Stop(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIdleWorkerTakesRequest: with one worker and no queue, requests sent
// one after another are all served: a worker that has answered and not yet
// gone back to waiting still counts as free.
func TestIdleWorkerTakesRequest(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	svc := start(t, nc, microsvc.Endpoint{Name: "one", Subject: "svc.one", Workers: 1, Queue: 0,
		Handler: func(_ context.Context, r *microsvc.Request) ([]byte, nats.Header, error) { return r.Data(), nil, nil }})
	defer svc.Stop(time.Second)
	client := natstest.Connect(t, srv)
	for i := range 500 {
		m, err := client.Request("svc.one", []byte("x"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
			t.Fatalf("request %d of 500, sent after the previous was answered: refused with %s", i+1, code)
		}
	}
}

// TestReplyMustBeAnInbox: a request whose reply subject is not under
// _INBOX. is dropped unanswered, so no caller can make a service publish,
// with the service's own rights, on a subject of its choosing (forged
// events, hardware commands). Control verbs ($SRV) are guarded the same way.
func TestReplyMustBeAnInbox(t *testing.T) {
	for _, workers := range []int{0, 2} {
		srv := natstest.Start(t)
		nc := natstest.Connect(t, srv)
		ran := make(chan struct{}, 4)
		start(t, nc, microsvc.Endpoint{Name: "echo", Subject: "svc.echo", Workers: workers, Queue: 2,
			Handler: func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
				ran <- struct{}{}
				return []byte("answer"), nil, nil
			}})
		client := natstest.Connect(t, srv)
		forged, err := client.SubscribeSync("victim.>")
		if err != nil {
			t.Fatal(err)
		}
		ping, _ := micro.ControlSubject(micro.PingVerb, "", "")
		for _, subj := range []string{"svc.echo", ping} {
			if err := client.PublishRequest(subj, "victim."+subj, nil); err != nil {
				t.Fatal(err)
			}
		}
		// A real request after them: once it is answered, the forged ones
		// were handled (requests on one connection arrive in order).
		if m, err := client.Request("svc.echo", nil, 10*time.Second); err != nil || string(m.Data) != "answer" {
			t.Fatalf("workers %d: request with an inbox: got %v, %v, want answer", workers, m, err)
		}
		if _, err := client.Request(ping, nil, 10*time.Second); err != nil {
			t.Fatalf("workers %d: ping with an inbox: %v", workers, err)
		}
		if m, err := forged.NextMsg(200 * time.Millisecond); err == nil {
			t.Fatalf("workers %d: service published on %s, want nothing", workers, m.Subject)
		}
		if got := len(ran); got != 1 {
			t.Fatalf("workers %d: handler ran %d times, want 1 (the forged request must not run)", workers, got)
		}
	}
}

func TestStartRefusesNonSemverVersion(t *testing.T) {
	nc := natstest.Connect(t, natstest.Start(t))
	for _, v := range []string{"", "1", "v1.0.0", "1.0"} {
		if _, err := microsvc.Start(nc, microsvc.Config{Name: "svc", Version: v}, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
			t.Errorf("version %q: got a service, want an error", v)
		}
	}
}

// TestRepliesNeverVanish: a reply, or a streamed message, larger than the
// server's message limit becomes RESOURCE_EXHAUSTED naming the size and the
// limit, at once, instead of a reply NATS refuses to send and a caller that
// waits out its deadline.
func TestRepliesNeverVanish(t *testing.T) {
	srv := natstest.Start(t, func(c *natsrv.Config) { c.MaxPayload = 16 << 10 })
	nc := natstest.Connect(t, srv)
	big := make([]byte, 20<<10)
	svc := start(t, nc,
		microsvc.Endpoint{Name: "big", Subject: "svc.big",
			Handler: func(context.Context, *microsvc.Request) ([]byte, nats.Header, error) { return big, nil, nil }},
		microsvc.Endpoint{Name: "chunk", Subject: "svc.chunk",
			Handler: func(_ context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
				if err := r.Publish(&nats.Msg{Data: big}); err != nil {
					return nil, nil, err
				}
				return []byte("done"), nil, nil
			}})
	defer svc.Stop(time.Second)
	caller := natstest.Connect(t, srv)
	for _, subj := range []string{"svc.big", "svc.chunk"} {
		m, err := caller.Request(subj, nil, 10*time.Second)
		if err != nil {
			t.Fatalf("%s: %v (the reply vanished)", subj, err)
		}
		code, msg := m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader)
		if code != string(fault.ResourceExhausted) || !strings.Contains(msg, "20480 bytes") || !strings.Contains(msg, "16384-byte") {
			t.Fatalf("%s: got %q %q, want RESOURCE_EXHAUSTED naming 20480 bytes and the 16384-byte limit", subj, code, msg)
		}
	}
	if st := svc.Stats(); st.Endpoints[0].NumErrors != 1 {
		t.Fatalf("the oversized reply is not counted as an error: %+v", st.Endpoints[0])
	}
}
