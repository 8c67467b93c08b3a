package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"

	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// Device logins on the gateway: a device presents the login `loki auth
// add-device` issued for MQTT as "authorization: Basic base64(user:pass)",
// and the identity service (subjects.AuthVerifyDevice) says which device it
// belongs to.
const (
	// maxLoginCacheTTL caps how long a verified login is remembered.
	maxLoginCacheTTL = 10 * time.Second
	// maxCachedLogins bounds the remembered logins.
	maxCachedLogins = 1 << 16
	// verifyTimeout bounds one verification when the call sets no deadline:
	// bcrypt takes tens of milliseconds, and a fleet reconnecting at once
	// queues on the identity service's workers.
	verifyTimeout = 15 * time.Second
)

// verifyRequest and verifyResponse are the identity service's JSON for
// subjects.AuthVerifyDevice (internal/auth DeviceLogin and
// VerifyDeviceResponse; the gateway does not link the identity store).
type verifyRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

type verifyResponse struct {
	DeviceID string `json:"device_id"`
}

// deviceLogin is a device's credential as presented, kept only in memory
// for the life of a call, so that a long link can check it again.
type deviceLogin struct {
	user, pass string
}

// key identifies the login in the cache without keeping it in clear.
func (l deviceLogin) key() [sha256.Size]byte {
	return sha256.Sum256([]byte(l.user + "\x00" + l.pass))
}

// parseBasic decodes the credential of "authorization: Basic <cred>".
func parseBasic(cred string) (deviceLogin, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err == nil {
		if user, pass, ok := strings.Cut(string(b), ":"); ok && user != "" && pass != "" {
			return deviceLogin{user: user, pass: pass}, nil
		}
	}
	return deviceLogin{}, fault.New(fault.Unauthenticated,
		"malformed device login: send metadata \"authorization: Basic base64(username:password)\"")
}

// deviceAuth verifies device logins through the identity service and
// remembers those that verified for a short while, so a device's calls do
// not each pay a bcrypt compare. Its methods are safe for concurrent use.
type deviceAuth struct {
	nc  *nats.Conn
	ttl time.Duration

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cachedLogin
}

type cachedLogin struct {
	device string
	until  time.Time
}

func newDeviceAuth(nc *nats.Conn, reverify time.Duration) *deviceAuth {
	return &deviceAuth{nc: nc, ttl: min(reverify, maxLoginCacheTTL), cache: map[[sha256.Size]byte]cachedLogin{}}
}

// verify returns the device id of login: from the cache unless fresh, else
// from the identity service. A login that does not verify is
// UNAUTHENTICATED (and forgotten); an identity service that cannot answer
// is UNAVAILABLE.
func (d *deviceAuth) verify(ctx context.Context, login deviceLogin, fresh bool) (string, error) {
	key := login.key()
	now := time.Now()
	if !fresh {
		d.mu.Lock()
		c, ok := d.cache[key]
		d.mu.Unlock()
		if ok && now.Before(c.until) {
			return c.device, nil
		}
	}
	id, err := d.ask(ctx, login)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		if fault.CodeOf(err) == fault.Unauthenticated {
			delete(d.cache, key)
		}
		return "", err
	}
	if len(d.cache) >= maxCachedLogins {
		for k, c := range d.cache {
			if !now.Before(c.until) {
				delete(d.cache, k)
			}
		}
		if len(d.cache) >= maxCachedLogins {
			clear(d.cache)
		}
	}
	d.cache[key] = cachedLogin{device: id, until: now.Add(d.ttl)}
	return id, nil
}

// ask asks the identity service whose login this is.
func (d *deviceAuth) ask(ctx context.Context, login deviceLogin) (string, error) {
	subj := subjects.AuthVerifyDevice
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, verifyTimeout)
		defer cancel()
	}
	body, err := json.Marshal(verifyRequest{Username: login.user, Password: login.pass})
	if err != nil {
		return "", err
	}
	resp, err := d.nc.RequestWithContext(ctx, subj, body)
	if err != nil {
		return "", microsvc.TransportError(err, subjects.AuthService, subj)
	}
	if err := microsvc.ReplyError(resp, subjects.AuthService, subj); err != nil {
		if fault.CodeOf(err) == fault.Unauthenticated {
			return "", fault.New(fault.Unauthenticated, "invalid device login")
		}
		return "", err
	}
	var out verifyResponse
	if err := json.Unmarshal(resp.Data, &out); err != nil {
		return "", fault.Wrap(fault.Internal, err, "decode %s reply: %v", subj, err)
	}
	if err := subjects.ValidDeviceID(out.DeviceID); err != nil {
		return "", fault.Wrap(fault.Internal, err, "%s answered a bad device id: %v", subj, err)
	}
	return out.DeviceID, nil
}

// principal is who makes a call: a bearer token's role, or a device.
type principal struct {
	role subjects.Role
	// device and login are a device principal's id and credential.
	device string
	login  deviceLogin
}

type principalKey struct{}

// devicePrincipal returns the device that makes the call of ctx, if a
// device does.
func devicePrincipal(ctx context.Context) (principal, bool) {
	p, ok := ctx.Value(principalKey{}).(principal)
	return p, ok && p.role == subjects.RoleDevice
}

// deviceMethods are the static methods a device principal may call: its
// link, and the controller calls a device makes as a Loki client. Tools
// run only when they match Config.DeviceCalls.
var deviceMethods = map[string]bool{
	lokiv1.DeviceLink_Connect_FullMethodName:         true,
	lokiv1.Loki_GetCapabilities_FullMethodName:       true,
	lokiv1.Loki_GetChildrenStatus_FullMethodName:     true,
	lokiv1.Loki_ListScripts_FullMethodName:           true,
	lokiv1.Loki_ExecuteScript_FullMethodName:         true,
	lokiv1.Loki_StreamScriptExecution_FullMethodName: true,
}

// deviceMayUse reports whether a device principal may call fullMethod: one
// of deviceMethods, a per-tool RPC, health or reflection.
func deviceMayUse(fullMethod string) bool {
	return deviceMethods[fullMethod] || strings.HasPrefix(fullMethod, "/"+ScriptsService+"/") || isHealthOrReflection(fullMethod)
}

// checkDevice verifies the Basic credential cred and returns ctx carrying
// the device principal, when that device may call fullMethod.
func (a *authenticator) checkDevice(ctx context.Context, cred, fullMethod string) (context.Context, error) {
	login, err := parseBasic(cred)
	if err != nil {
		return ctx, statusError(a.log, err, "", "")
	}
	id, err := a.devices.verify(ctx, login, false)
	if err != nil {
		return ctx, statusError(a.log, err, "", "")
	}
	if _, served := accessOf(fullMethod); served && !deviceMayUse(fullMethod) {
		method := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
		return ctx, statusError(a.log, fault.New(fault.PermissionDenied,
			"%s is not open to devices: device %s may use its DeviceLink, GetCapabilities, GetChildrenStatus, ListScripts, "+
				"and run the tools [jotunheim] device_calls allows", method, id), "", "")
	}
	return context.WithValue(ctx, principalKey{}, principal{role: subjects.RoleDevice, device: id, login: login}), nil
}

// deviceMayRun returns nil unless ctx's caller is a device that tool
// matches no pattern of cfg.DeviceCalls for: then PERMISSION_DENIED naming
// the setting, as the device service answers a device's tool call on MQTT.
func (g *Gateway) deviceMayRun(ctx context.Context, tool string) error {
	p, ok := devicePrincipal(ctx)
	if !ok {
		return nil
	}
	if err := jotunheim.DeviceMayCall(g.cfg.DeviceCalls, p.device, tool); err != nil {
		return err
	}
	def, err := g.lc.Get(ctx, tool)
	if err != nil {
		return err
	}
	return jotunheim.NotAnotherDevicesTool(p.device, def)
}
