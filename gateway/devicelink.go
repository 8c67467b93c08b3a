package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/metrics"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// The device link (loki.v1.DeviceLink/Connect) bridges one gRPC stream per
// device onto the NATS subjects an MQTT device's topics map to, so the
// device service cannot tell the transports apart. docs/DEVICES.md ("gRPC
// transport") is the contract for firmware authors.
const (
	// linkQueue is how many frames for a device may wait for its link. When
	// the device reads slower than the platform sends, further frames are
	// dropped and counted, as NATS drops messages to a slow MQTT
	// subscriber: every platform-to-device message reaches MQTT devices at
	// QoS 0 too, and the platform already recovers from a lost one
	// (commands time out, OTA chunks are asked for again, a manifest is
	// answered again).
	linkQueue = 64
	// linkSendGrace bounds how long a closing link waits for a frame being
	// sent to a device that does not read.
	linkSendGrace = time.Second
)

// Keepalive of every gRPC connection: the gateway pings a connection idle
// for Config.Keepalive and closes it when the ping is not answered within
// Config.KeepaliveTimeout; a device link ends with it, and the device goes
// offline. Clients may ping as often as every keepaliveMinTime, with or
// without a call running (gRPC's default refuses pings more often than
// every 5 minutes, too slow to notice a lost device).
const keepaliveMinTime = 10 * time.Second

// keepaliveOptions are the server options for the keepalive above.
func keepaliveOptions(cfg Config) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: cfg.Keepalive, Timeout: cfg.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
	}
}

// Why a link ended, beyond the device's own close.
var (
	errLinkReplaced = errors.New("another link of the same device replaced this one")
	errLinkStopping = errors.New("the gateway is shutting down")
)

// deviceLinks serves DeviceLink and holds the live link of each device.
type deviceLinks struct {
	lokiv1.UnimplementedDeviceLinkServer
	g *Gateway

	mu    sync.Mutex
	links map[string]*link
}

var _ lokiv1.DeviceLinkServer = (*deviceLinks)(nil)

func newDeviceLinks(g *Gateway) *deviceLinks {
	return &deviceLinks{g: g, links: map[string]*link{}}
}

// link is one device's live stream.
type link struct {
	device string
	cancel context.CancelCauseFunc
	// replaced is set when a newer link of the same device took over:
	// this one then publishes no "offline", the device being online
	// through the other.
	replaced atomic.Bool
	// offline is whether the last status the device sent was "offline".
	offline atomic.Bool
	// claim is the link's claim on the bus, set by register.
	claim linkClaim
	// haDropped counts frames for topics outside the device tree (Home
	// Assistant discovery), which a link cannot deliver.
	haDropped atomic.Uint64
}

// register makes l its device's live link, ending the older one, and
// claims the device on the bus so other gateways end theirs.
func (s *deviceLinks) register(l *link, log *slog.Logger) {
	l.claim = linkClaim{Link: nuid.Next(), At: time.Now().UnixNano()}
	s.mu.Lock()
	old := s.links[l.device]
	s.links[l.device] = l
	s.mu.Unlock()
	if old != nil {
		old.replaced.Store(true)
		old.cancel(errLinkReplaced)
	}
	subj, err := subjects.DeviceLinkClaim(l.device)
	if err == nil {
		var b []byte
		if b, err = json.Marshal(l.claim); err == nil {
			err = s.g.nc.Publish(subj, b)
		}
	}
	if err != nil {
		log.Warn("could not claim the device's link on the bus: another gateway may keep a stale link", "err", err)
	}
}

// linkClaim is a gateway's claim of a device's link, on
// subjects.DeviceLinkClaim: the link's id and when it opened.
type linkClaim struct {
	Link string `json:"link"`
	At   int64  `json:"at"`
}

// claimWindow is how close two claims must be for their times to decide
// which link wins; a claim for a link older than that always wins, so a
// gateway whose clock is behind another's still takes over a device that
// moved to it.
const claimWindow = 2 * time.Second

// supersedes reports whether claim c, from another gateway, ends the link
// claimed by o: always when o's link opened over claimWindow ago (the
// device reconnected elsewhere since); for two links opened within the
// window, the later one (ties broken by link id, so every gateway agrees).
func (c linkClaim) supersedes(o linkClaim) bool {
	if time.Since(time.Unix(0, o.At)) > claimWindow {
		return true
	}
	return c.At > o.At || (c.At == o.At && c.Link > o.Link)
}

// onClaim ends this gateway's link of the claimed device when another
// gateway's link is newer: the device moved (a reconnect through a load
// balancer), and the old link, which may be half-open, must neither
// forward commands nor mark the device offline when it finally ends.
func (s *deviceLinks) onClaim(m *nats.Msg) {
	id := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	var c linkClaim
	if err := json.Unmarshal(m.Data, &c); err != nil {
		s.g.log.Warn("bad device link claim", keyDevice, id, "err", err)
		return
	}
	s.mu.Lock()
	cur := s.links[id]
	s.mu.Unlock()
	if cur == nil || cur.claim.Link == c.Link || !c.supersedes(cur.claim) {
		return
	}
	cur.replaced.Store(true)
	cur.cancel(errLinkReplaced)
}

// unregister forgets l unless a newer link replaced it.
func (s *deviceLinks) unregister(l *link) {
	s.mu.Lock()
	if s.links[l.device] == l {
		delete(s.links, l.device)
	}
	s.mu.Unlock()
}

// Connect serves one device's link until the device closes it, the
// connection fails, the login is revoked, another link of the same device
// replaces it, the device breaks the protocol, or the gateway stops.
func (s *deviceLinks) Connect(stream grpc.BidiStreamingServer[jv1.LinkFrame, jv1.LinkFrame]) error {
	g := s.g
	p, ok := devicePrincipal(stream.Context())
	if !ok {
		return statusError(g.log, fault.New(fault.Unauthenticated,
			"DeviceLink/Connect needs the device's login: send metadata \"authorization: Basic base64(username:password)\""), "", "")
	}
	id := p.device
	log := g.log.With(keyDevice, id)
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	l := &link{device: id, cancel: cancel}
	s.register(l, log)
	defer s.unregister(l)
	g.metrics.LinkUp()
	defer g.metrics.LinkDown()

	// What the platform sends the device: one subscription per downlink
	// kind, all into one bounded queue.
	queue := make(chan *nats.Msg, linkQueue)
	var subs []*nats.Subscription
	defer func() {
		var dropped int64
		for _, sub := range subs {
			if n, err := sub.Dropped(); err == nil {
				dropped += int64(n)
			}
			_ = sub.Unsubscribe()
		}
		if dropped > 0 {
			g.metrics.LinkDropped(metrics.DropSlowDevice, uint64(dropped))
			log.Warn("device link dropped frames for a device that read too slowly", "dropped", dropped)
		}
	}()
	for _, k := range subjects.DeviceDownlinkKinds {
		subj, err := subjects.DeviceSubscription(id, k)
		if err == nil {
			var sub *nats.Subscription
			if sub, err = g.nc.ChanSubscribe(subj, queue); err == nil {
				subs = append(subs, sub)
				continue
			}
		}
		return statusError(g.log, fault.Wrap(fault.Unavailable, err, "device link of %s: subscribe: %v", id, err), "", "")
	}
	if err := g.nc.Flush(); err != nil {
		return statusError(g.log, fault.Wrap(fault.Unavailable, err, "device link of %s: NATS: %v", id, err), "", "")
	}
	log.Info("device link up")

	// One sender: gRPC streams are not safe for concurrent Send.
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-queue:
				f, ok := downlinkFrame(id, m)
				if !ok {
					continue
				}
				if err := stream.Send(f); err != nil {
					cancel(err)
					return
				}
			}
		}
	}()
	// One receiver: each frame the device sends, checked, on its subject.
	received := make(chan error, 1)
	go func() { received <- s.receive(ctx, stream, l, log) }()

	reverify := time.NewTicker(g.cfg.DeviceReverify)
	defer reverify.Stop()
	var end error
	for end == nil {
		select {
		case err := <-received:
			end = err
			if ctx.Err() != nil {
				end = context.Cause(ctx) // replaced or ending: say why, not what the last frame saw
			} else if end == nil {
				end = io.EOF
			}
		case <-ctx.Done():
			end = context.Cause(ctx)
		case <-g.stopping:
			end = errLinkStopping
		case <-reverify.C:
			// Fresh: a revoked login ends the link within one period. An
			// identity service that cannot answer leaves the link up.
			// Given up when the gateway stops, so a shutdown while the
			// identity service is away does not wait on it.
			vctx, vcancel := context.WithTimeout(ctx, verifyTimeout)
			go func() {
				select {
				case <-g.stopping:
					vcancel()
				case <-vctx.Done():
				}
			}()
			_, err := g.auth.devices.verify(vctx, p.login, true)
			vcancel()
			if err != nil {
				if fault.CodeOf(err) == fault.Unauthenticated {
					end = fault.New(fault.Unauthenticated, "device %s: the device login is no longer valid (revoked?)", id)
				} else if ctx.Err() == nil {
					log.Warn("device login not checked again", keyErr, err)
				}
			}
		}
	}
	cancel(end)
	select {
	case <-sent:
	case <-time.After(linkSendGrace):
	}
	s.presenceOnClose(l, log)
	return linkStatus(g.log, id, end)
}

// receive reads frames until the stream ends and publishes each on its
// subject. It returns nil when the device closed its side, the error that
// ended the stream, or the protocol violation that ends the link.
func (s *deviceLinks) receive(ctx context.Context, stream grpc.BidiStreamingServer[jv1.LinkFrame, jv1.LinkFrame], l *link, log *slog.Logger) error {
	g := s.g
	for {
		f, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		subj, kind, err := s.uplinkSubject(l, f)
		if err != nil {
			return err
		}
		if subj == "" {
			continue
		}
		if ctx.Err() != nil {
			// Replaced or ending: what comes after belongs to no live link.
			return nil
		}
		if kind == subjects.DeviceStatus {
			l.offline.Store(string(f.GetPayload()) == subjects.PresenceOffline)
		}
		if err := g.nc.Publish(subj, f.GetPayload()); err != nil {
			return fault.Wrap(fault.Unavailable, err, "device link of %s: publish: %v", l.device, err)
		}
	}
}

// uplinkSubject checks a frame from device l and returns the subject it
// goes to and its kind, or an empty subject for a frame dropped and
// counted, or the error that ends the link: a topic that is malformed or
// unknown (INVALID_ARGUMENT), one the device may not send — another
// device's, a platform-to-device kind (PERMISSION_DENIED) — or a payload
// over the limit (RESOURCE_EXHAUSTED).
func (s *deviceLinks) uplinkSubject(l *link, f *jv1.LinkFrame) (subj, kind string, err error) {
	topic, id := f.GetTopic(), l.device
	if n, max := len(f.GetPayload()), s.g.cfg.DeviceMaxFrameBytes; n > max {
		return "", "", fault.New(fault.ResourceExhausted, "frame on %q: payload of %d bytes is over the %d-byte limit", topic, n, max)
	}
	if rest, ok := strings.CutPrefix(topic, subjects.DevicePrefix+"/"); ok {
		// An MQTT topic, not one relative to the device's tree.
		if owner, _, _ := strings.Cut(rest, "/"); owner != id {
			return "", "", fault.New(fault.PermissionDenied, "frame on %q: device %s may act only as itself", topic, id)
		}
		return "", "", fault.New(fault.InvalidArgument,
			"frame on %q: topics are relative to the device's tree (send %q)", topic, strings.TrimPrefix(rest, id+"/"))
	}
	if strings.HasPrefix(topic, subjects.HADiscoveryPrefix+"/") {
		// Home Assistant discovery lives outside the device tree, where a
		// link delivers nothing: dropped, not fatal, so an agent that
		// announces itself the MQTT way keeps its link.
		if l.haDropped.Add(1) == 1 {
			s.g.log.Warn("device link: Home Assistant topics are not delivered over gRPC; dropping them", keyDevice, id, "topic", topic)
		}
		return "", "", nil
	}
	subj, kind, _, err = subjects.DeviceTopicSubject(id, topic)
	if err != nil {
		return "", "", fault.New(fault.InvalidArgument, "frame on %q: %v", topic, err)
	}
	if !slices.Contains(subjects.DeviceUplinkKinds, kind) {
		return "", "", fault.New(fault.PermissionDenied,
			"frame on %q: %s is sent by the platform to the device, not by the device", topic, kind)
	}
	return subj, kind, nil
}

// downlinkFrame turns a message on one of device id's downlink subjects
// into the frame the device receives.
func downlinkFrame(id string, m *nats.Msg) (*jv1.LinkFrame, bool) {
	dev, kind, entity, err := subjects.ParseDeviceSubject(m.Subject)
	if err != nil || dev != id || !slices.Contains(subjects.DeviceDownlinkKinds, kind) {
		return nil, false
	}
	topic := kind
	if entity != "" {
		topic += "/" + entity
	}
	return &jv1.LinkFrame{Topic: topic, Payload: m.Data}, true
}

// presenceOnClose publishes "offline" for a link that ended without the
// device saying so, as an MQTT will would, unless a newer link of the same
// device replaced it.
func (s *deviceLinks) presenceOnClose(l *link, log *slog.Logger) {
	if n := l.haDropped.Load(); n > 0 {
		s.g.metrics.LinkDropped(metrics.DropHomeAssistant, n)
		log.Info("device link dropped Home Assistant frames", "dropped", n)
	}
	if l.replaced.Load() || l.offline.Load() {
		log.Info("device link down")
		return
	}
	subj, err := subjects.DeviceSubject(l.device, subjects.DeviceStatus)
	if err == nil {
		err = s.g.nc.Publish(subj, []byte(subjects.PresenceOffline))
	}
	if err != nil {
		log.Warn("device link down; offline not published", keyErr, err)
		return
	}
	log.Info("device link down; published offline")
}

// linkStatus is the status a link ends with for the reason end.
func linkStatus(log *slog.Logger, id string, end error) error {
	switch {
	case errors.Is(end, io.EOF):
		return nil
	case errors.Is(end, errLinkReplaced):
		return status.Errorf(codes.Aborted, "device %s: %v", id, end)
	case errors.Is(end, errLinkStopping):
		return status.Errorf(codes.Unavailable, "%v: reconnect", end)
	case errors.Is(end, context.Canceled):
		return status.Error(codes.Canceled, "link closed by the device")
	}
	return statusError(log, end, "", "")
}
