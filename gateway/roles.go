package gateway

import (
	"fmt"
	"strings"

	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/micro"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
)

// busAccess is what the gateway does on NATS to answer a call: the subjects
// it publishes requests to and those it subscribes to (replies to its own
// inbox aside). A token's role may make the call when that role's NATS
// permissions (subjects.RolePermissions) allow all of it, so a token has
// the same rights over gRPC as an identity of its role has over NATS, and a
// change to a role's permissions changes both.
type busAccess struct {
	pub, sub []string
}

var (
	// accessNone is for calls the gateway answers without NATS.
	accessNone = &busAccess{}
	// accessExec runs a tool, and cancels it when the caller goes away.
	accessExec = &busAccess{pub: []string{subjects.LokiExecAll, subjects.LokiCancel}}
	// accessList reads the tool definitions.
	accessList = &busAccess{pub: []string{subjects.LokiToolsList}}
)

// methodAccess is what each RPC of loki.v1.Loki, loki.v1.Devices and
// loki.v1.DeviceLink does on NATS. New refuses
// to build a gateway serving a method missing here.
var methodAccess = map[string]*busAccess{
	lokiv1.Loki_GetCapabilities_FullMethodName:       {pub: []string{subjects.LokiCapabilities}},
	lokiv1.Loki_GetChildrenStatus_FullMethodName:     {pub: srvStatsSubjects()},
	lokiv1.Loki_ListScripts_FullMethodName:           accessList,
	lokiv1.Loki_GetScript_FullMethodName:             {pub: []string{subjects.LokiToolsGet}},
	lokiv1.Loki_RegisterScript_FullMethodName:        {pub: []string{subjects.LokiToolsRegister}},
	lokiv1.Loki_UnregisterScript_FullMethodName:      {pub: []string{subjects.LokiToolsUnregister}},
	lokiv1.Loki_ExecuteScript_FullMethodName:         accessExec,
	lokiv1.Loki_StreamScriptExecution_FullMethodName: accessExec,
	lokiv1.Loki_WatchEvents_FullMethodName:           {sub: []string{subjects.LokiEventsAll}},

	lokiv1.Devices_ListDevices_FullMethodName:      {pub: []string{subjects.DevicesList}},
	lokiv1.Devices_GetDevice_FullMethodName:        {pub: []string{subjects.DevicesGet}},
	lokiv1.Devices_CommandDevice_FullMethodName:    {pub: []string{subjects.DevicesCmd}},
	lokiv1.Devices_WatchDevices_FullMethodName:     {sub: []string{subjects.DevicesEventsAll}},
	lokiv1.Devices_GetRolloutStatus_FullMethodName: {pub: []string{subjects.DevicesOTAStatus}},
	// OpenStream drives a device's stream source (stream/ctl) and reads its
	// chunks (stream/data). Whoever implements it may narrow this to a
	// devices.* request; without an entry New refuses to start at all.
	lokiv1.Devices_OpenStream_FullMethodName: deviceStreamAccess(),

	// Only a device principal may connect (as itself; see devicelink.go):
	// no token's role is enough.
	lokiv1.DeviceLink_Connect_FullMethodName: deviceLinkAccess(),
}

// deviceStreamAccess is what reading a device's stream does on NATS.
func deviceStreamAccess() *busAccess {
	ctl, err1 := subjects.DeviceSubjectAll(subjects.DeviceStreamCtl)
	data, err2 := subjects.DeviceSubjectAll(subjects.DeviceStreamData)
	if err1 != nil || err2 != nil {
		panic(fmt.Sprintf("gateway: stream subjects: %v, %v", err1, err2))
	}
	return &busAccess{pub: []string{ctl}, sub: []string{data}}
}

// deviceLinkAccess is what a device link does on NATS: verify the login,
// publish what the device sends, hear what is sent to it.
func deviceLinkAccess() *busAccess {
	a := &busAccess{pub: []string{subjects.AuthVerifyDevice}}
	for _, k := range subjects.DeviceUplinkKinds {
		s, err := subjects.DeviceSubjectAll(k)
		if err != nil {
			panic(fmt.Sprintf("gateway: uplink kind %q: %v", k, err))
		}
		a.pub = append(a.pub, s)
	}
	for _, k := range subjects.DeviceDownlinkKinds {
		s, err := subjects.DeviceSubjectAll(k)
		if err != nil {
			panic(fmt.Sprintf("gateway: downlink kind %q: %v", k, err))
		}
		a.sub = append(a.sub, s)
	}
	return a
}

// serviceAccess is what every method of a service does on NATS, for
// services whose methods all need the same.
var serviceAccess = map[string]*busAccess{
	ScriptsService:                          accessExec,
	healthpb.Health_ServiceDesc.ServiceName: accessNone,
	// Reflection describes the registered tools, as ListScripts does, from
	// the gateway's own view of the registry.
	reflectionv1.ServerReflection_ServiceDesc.ServiceName:      accessList,
	reflectionv1alpha.ServerReflection_ServiceDesc.ServiceName: accessList,
}

// srvStatsSubjects are the $SRV.STATS requests of GetChildrenStatus: to
// every service, or to those named.
func srvStatsSubjects() []string {
	all, err1 := micro.ControlSubject(micro.StatsVerb, "", "")
	byName, err2 := micro.ControlSubject(micro.StatsVerb, "*", "")
	if err1 != nil || err2 != nil {
		panic(fmt.Sprintf("gateway: $SRV.STATS subjects: %v, %v", err1, err2))
	}
	return []string{all, byName}
}

// accessOf returns what a call of fullMethod ("/service/method") does on
// NATS; false for a method the gateway does not serve.
func accessOf(fullMethod string) (*busAccess, bool) {
	if a, ok := methodAccess[fullMethod]; ok {
		return a, true
	}
	i := strings.LastIndexByte(fullMethod, '/')
	if i <= 0 {
		return nil, false
	}
	a, ok := serviceAccess[fullMethod[1:i]]
	return a, ok
}

// roleRights works out, for each role, which accesses its NATS permissions
// allow.
func roleRights(roles ...subjects.Role) (map[subjects.Role]map[*busAccess]bool, error) {
	accesses := []*busAccess{accessNone}
	for _, a := range methodAccess {
		accesses = append(accesses, a)
	}
	for _, a := range serviceAccess {
		accesses = append(accesses, a)
	}
	rights := map[subjects.Role]map[*busAccess]bool{}
	for _, r := range roles {
		// The inbox only scopes replies, which come to the gateway's own
		// connection; any valid token will do.
		p, err := subjects.RolePermissions(r, "gateway")
		if err != nil {
			return nil, fmt.Errorf("permissions of role %s: %w", r, err)
		}
		rights[r] = map[*busAccess]bool{}
		for _, a := range accesses {
			rights[r][a] = permits(p, a)
		}
	}
	return rights, nil
}

// permits reports whether p allows everything a does.
func permits(p subjects.Permissions, a *busAccess) bool {
	for _, s := range a.pub {
		if !p.AllowsPublish(s) {
			return false
		}
	}
	for _, s := range a.sub {
		if !p.AllowsSubscribe(s) {
			return false
		}
	}
	return true
}
