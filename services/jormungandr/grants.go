package jormungandr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/subjects"
)

// anyTopic is the MQTT topic filter of every topic: what a net.mqtt grant
// without a topic part allows on brokers other than Loki's own listener.
const anyTopic = "#"

// ErrGrant is wrapped by every error of CheckGrant.
var ErrGrant = errors.New("invalid net grant")

// mqttGrant is a parsed net.mqtt grant scope,
// <host>[:<port>][/<topic filter>].
type mqttGrant struct {
	anyHost bool       // no scope, "*" or host "*"
	host    string     // canonical name, or the IP's string form
	ip      netip.Addr // set when host is an IP address
	port    int        // 0: any port the policy allows
	// filter is the MQTT topic filter the grant allows, ending in "#": the
	// filter written in the grant plus every level below it ("readings"
	// and "readings/#" are both "readings/#"); anyTopic without a topic part.
	filter string
}

// parseMQTTScope parses the scope of a net.mqtt grant, or of a net grant
// without an area when it is used for MQTT.
func parseMQTTScope(scope string) (mqttGrant, error) {
	g := mqttGrant{filter: anyTopic}
	if scope == "" || scope == "*" {
		g.anyHost = true
		return g, nil
	}
	hostport, topic, hasTopic := scope, "", false
	if strings.HasPrefix(scope, "[") {
		end := strings.IndexByte(scope, ']')
		if end < 0 {
			return g, errors.New("an IPv6 address needs its closing ]")
		}
		if i := strings.IndexByte(scope[end:], '/'); i >= 0 {
			hostport, topic, hasTopic = scope[:end+i], scope[end+i+1:], true
		}
	} else if h, tp, ok := strings.Cut(scope, "/"); ok {
		hostport, topic, hasTopic = h, tp, true
	}
	host := hostport
	switch {
	case strings.HasPrefix(hostport, "[") && strings.HasSuffix(hostport, "]"):
		host = hostport[1 : len(hostport)-1]
	case strings.HasPrefix(hostport, "["), strings.Count(hostport, ":") == 1:
		h, p, err := net.SplitHostPort(hostport)
		if err != nil {
			return g, fmt.Errorf("want <host>[:<port>][/<topic>], e.g. 127.0.0.1:1883/readings/#: %v", unwrapAddrError(err))
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return g, fmt.Errorf("port %q must be 1 to 65535", p)
		}
		host, g.port = h, n
	}
	switch a, err := netip.ParseAddr(host); {
	case strings.HasPrefix(hostport, "[") && (err != nil || !a.Is6()):
		return g, fmt.Errorf("host %q: brackets are for IPv6 addresses", hostport)
	case host == "*":
		g.anyHost = true
	case err == nil:
		if a.Zone() != "" || a.Is4In6() {
			return g, errors.New("write an IPv4 address in IPv4 form and an IPv6 one without a zone")
		}
		g.ip, g.host = a, a.String()
	default:
		name, err := canonicalName(host)
		if err != nil {
			return g, err
		}
		g.host = name
	}
	if !hasTopic {
		return g, nil
	}
	f, err := grantFilter(topic)
	if err != nil {
		return g, err
	}
	g.filter = f
	return g, nil
}

func unwrapAddrError(err error) error {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return errors.New(ae.Err)
	}
	return err
}

// grantFilter checks the topic part of a grant and returns the filter it
// allows: the topic filter and every level below it. Topics under Loki's
// own roots (loki/, hel/, jotunheim/, ...) are refused whatever the
// broker: on Loki's MQTT listener they are its internal subjects.
func grantFilter(topic string) (string, error) {
	if err := checkTopic(topic, true); err != nil {
		return "", err
	}
	levels := strings.Split(topic, "/")
	if slices.Contains(levels, "") {
		return "", fmt.Errorf("topic %q has an empty level", topic)
	}
	if slices.Contains(subjects.InternalRoots, levels[0]) {
		return "", fmt.Errorf("topic %q: topics under %s/ belong to Loki itself", topic, levels[0])
	}
	if levels[len(levels)-1] != "#" {
		topic += "/#"
	}
	return topic, nil
}

// covers reports whether g allows connecting to t.
func (g mqttGrant) covers(t target) bool {
	if g.port != 0 && g.port != t.port {
		return false
	}
	switch {
	case g.anyHost:
		return true
	case g.ip.IsValid():
		return t.ip.IsValid() && g.ip == t.ip
	}
	return !t.ip.IsValid() && g.host == t.host
}

// mqttAccess is what a tool's grants allow on one broker.
type mqttAccess struct {
	// hosts are the only hosts the connection may reach (nil: any the
	// policy allows), as MQTTConnectRequest.Hosts.
	hosts []string
	// topics are the topic filters of the grants covering the broker, as
	// MQTTConnectRequest.Topics: anyTopic for a grant without a topic part.
	topics []string
}

// mqttGrants returns what gs allow on the broker t, or PERMISSION_DENIED
// naming the grant to add when no grant covers it. A grant whose scope does
// not parse is INVALID_ARGUMENT naming it (CheckGrant refuses it when the
// tool is loaded).
func mqttGrants(gs engine.Grants, t target) (mqttAccess, error) {
	return mqttGrantsCovering(gs, t, mqttGrant.covers)
}

// localMQTTGrants is what a tool's grants allow on broker "local", Loki's
// own MQTT listener, wherever it listens: the grants for a loopback host
// (or any host) that name no port. The service picks the address, so the
// access names no hosts.
func localMQTTGrants(gs engine.Grants) (mqttAccess, error) {
	a, err := mqttGrantsCovering(gs, target{host: "127.0.0.1", ip: netip.AddrFrom4([4]byte{127, 0, 0, 1})}, func(g mqttGrant, _ target) bool {
		return g.port == 0 && (g.anyHost || g.ip.IsValid() && g.ip.IsLoopback() || strings.EqualFold(g.host, "localhost"))
	})
	if fault.CodeOf(err) == fault.PermissionDenied {
		return a, fault.New(fault.PermissionDenied, "broker %q is Loki's own MQTT listener: the tool needs a grant such as "+
			"\"net.mqtt:127.0.0.1/<topic>\" (no port: the listener may move)", LocalBroker)
	}
	a.hosts = nil
	return a, err
}

func mqttGrantsCovering(gs engine.Grants, t target, covers func(mqttGrant, target) bool) (mqttAccess, error) {
	var a mqttAccess
	anyHost, found := false, false
	for _, g := range gs {
		if g.Module != grantModule || (g.Area != "" && g.Area != areaMQTT) {
			continue
		}
		mg, err := parseMQTTScope(g.Scope)
		if err != nil {
			return a, fault.New(fault.InvalidArgument, "tool grant %q: %v", g.String(), err)
		}
		if !covers(mg, t) {
			continue
		}
		found = true
		anyHost = anyHost || mg.anyHost
		if !slices.Contains(a.topics, mg.filter) {
			a.topics = append(a.topics, mg.filter)
		}
	}
	if !found {
		want := engine.Grant{Module: grantModule, Area: areaMQTT, Scope: grantHost(t.host)}
		return a, fault.New(fault.PermissionDenied, "tool has no grant for %s (port %d)", want, t.port)
	}
	if !anyHost {
		a.hosts = []string{t.host}
	}
	return a, nil
}

// grantHost writes host as a grant scope names it: IPv6 in brackets.
func grantHost(host string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]"
	}
	return host
}

// CheckGrant returns an error wrapping ErrGrant when g, a grant of the net
// module, cannot be used: an unknown area, a host scope that is not a host,
// or a net.mqtt scope that is not <host>[:<port>][/<topic filter>] (a topic
// under Loki's own roots, such as loki/ or jotunheim/, is refused). Grants
// of other modules are not its business and pass. The tool loader calls it
// so a bad grant fails when a tool is loaded, not when its script runs.
func CheckGrant(g engine.Grant) error {
	if g.Module != grantModule {
		return nil
	}
	var err error
	switch g.Area {
	case areaMQTT:
		_, err = parseMQTTScope(g.Scope)
	case "", areaHTTP, areaWS:
		if g.Scope != "" && g.Scope != "*" {
			_, err = parseHostScope(g.Scope)
			if err != nil && g.Area == "" && strings.ContainsAny(g.Scope, "/") {
				err = fmt.Errorf("a topic belongs to a net.mqtt grant: %v", err)
			}
		}
	default:
		err = fmt.Errorf("no area %q (areas: %s, %s, %s)", g.Area, areaHTTP, areaWS, areaMQTT)
	}
	if err != nil {
		return fmt.Errorf("%w %q: %v", ErrGrant, g.String(), err)
	}
	return nil
}

// parseHostScope checks the scope of a net.http or net.ws grant: a host
// name or an IP address, nothing more.
func parseHostScope(scope string) (string, error) {
	h := strings.TrimSuffix(strings.TrimPrefix(scope, "["), "]")
	if a, err := netip.ParseAddr(h); err == nil {
		if a.Zone() != "" || a.Is4In6() {
			return "", errors.New("write an IPv4 address in IPv4 form and an IPv6 one without a zone")
		}
		return a.String(), nil
	}
	if strings.ContainsAny(scope, "/:") {
		return "", fmt.Errorf("scope %q: want a host name or an IP address, without port or path", scope)
	}
	return canonicalName(scope)
}

// topicMatches reports whether the MQTT topic filter f covers sub, a topic
// or a topic filter: every topic sub matches, f matches too. As in MQTT, a
// wildcard first level does not match topics starting with '$', and "a/#"
// covers "a" itself.
func topicMatches(f, sub string) bool {
	fl, sl := strings.Split(f, "/"), strings.Split(sub, "/")
	if strings.HasPrefix(sub, "$") && (fl[0] == "+" || fl[0] == "#") {
		return false
	}
	for i, l := range fl {
		if l == "#" {
			return true
		}
		if i >= len(sl) {
			return false
		}
		switch {
		case sl[i] == "#":
			return false // sub is wider than f below this level
		case l == "+":
		case l != sl[i]:
			return false
		}
	}
	return len(sl) == len(fl)
}
