package jormungandr

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/loki-iot/loki/internal/fault"
)

// Policy is the egress policy: which hosts, addresses and ports scripts may
// reach. It denies everything not listed. A host name never unlocks a
// loopback, private, link-local, metadata or otherwise non-public address:
// such an address is reached only when it is listed itself, as an IP in
// AllowHosts or inside AllowCIDRs. The address is checked when the
// connection is dialed, so a name that resolves (or re-resolves) to an
// internal address is refused however it was resolved.
type Policy struct {
	// AllowHosts lists what may be reached, each entry one of
	//   "api.example.com"   that host name,
	//   "*.example.com"     every name below example.com (not example.com itself),
	//   "*"                 every host name and public IP address,
	//   "192.0.2.7", "2001:db8::1"  that IP address (even a non-public one),
	// any of them optionally with a port ("api.example.com:8443",
	// "[2001:db8::1]:443"), which then is the only port allowed for it.
	// An entry without a port allows the ports of AllowPorts.
	AllowHosts []string `toml:"allow_hosts"`
	// AllowCIDRs lists address ranges that may be reached on the ports of
	// AllowPorts, through IP addresses in URLs or names resolving into them
	// ("10.0.0.0/8" unlocks the private range for every allowed host).
	AllowCIDRs []string `toml:"allow_cidrs"`
	// AllowPorts lists the ports of entries without their own port.
	AllowPorts []int `toml:"allow_ports"`
}

// Allow adds host (a name or an IP address) on port alone to p. The wiring
// uses it to let scripts reach a local MQTT listener: Allow("127.0.0.1", 1883).
// An unspecified listen address (0.0.0.0, ::, "") allows 127.0.0.1 and ::1.
func (p *Policy) Allow(host string, port int) {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		p.AllowHosts = append(p.AllowHosts,
			net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), net.JoinHostPort("::1", strconv.Itoa(port)))
		return
	}
	p.AllowHosts = append(p.AllowHosts, net.JoinHostPort(host, strconv.Itoa(port)))
}

// AllowAddr is Allow for a "host:port" address, such as a listener's.
func (p *Policy) AllowAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: allow %q: %v", ErrConfig, addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%w: allow %q: port must be 1 to 65535", ErrConfig, addr)
	}
	p.Allow(host, n)
	return nil
}

// hostRule is one compiled AllowHosts entry.
type hostRule struct {
	any    bool       // "*"
	name   string     // exact host name
	suffix string     // ".example.com" for "*.example.com"
	ip     netip.Addr // an IP address entry
	port   int        // 0: the ports of AllowPorts
}

// policy is a compiled Policy. It is read-only once built.
type policy struct {
	hosts []hostRule
	cidrs []netip.Prefix
	ports map[int]bool
}

// livePolicy is the policy a Service checks now: SetPolicy swaps it, and
// every check and dial loads the current one, so a change applies to the
// next request and the next (re)connect, not to connections already open.
type livePolicy struct{ cur atomic.Pointer[policy] }

func (l *livePolicy) check(t target) error { return l.cur.Load().check(t) }

func (l *livePolicy) dial(ctx context.Context, t target) (net.Conn, error) {
	return l.cur.Load().dial(ctx, t)
}

// dialer checks each address against the policy current when it is dialed.
func (l *livePolicy) dialer(host string, timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout: timeout,
		Control: func(network, address string, c syscall.RawConn) error {
			return l.cur.Load().dialer(host, timeout).Control(network, address, c)
		},
	}
}

// compile checks every entry of p, naming the first bad one by its TOML key.
func (p Policy) compile() (*policy, error) {
	pol := &policy{ports: map[int]bool{}}
	for i, port := range p.AllowPorts {
		if port < 1 || port > 65535 {
			return nil, fmt.Errorf("%w: policy.allow_ports[%d] = %d: must be 1 to 65535", ErrConfig, i, port)
		}
		pol.ports[port] = true
	}
	for i, s := range p.AllowHosts {
		r, err := parseHostRule(s)
		if err != nil {
			return nil, fmt.Errorf("%w: policy.allow_hosts[%d] = %q: %v", ErrConfig, i, s, err)
		}
		pol.hosts = append(pol.hosts, r)
	}
	for i, s := range p.AllowCIDRs {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%w: policy.allow_cidrs[%d] = %q: want a CIDR such as 10.0.0.0/8", ErrConfig, i, s)
		}
		if pfx.Addr().Is4In6() {
			return nil, fmt.Errorf("%w: policy.allow_cidrs[%d] = %q: write IPv4 ranges in IPv4 form", ErrConfig, i, s)
		}
		pol.cidrs = append(pol.cidrs, pfx.Masked())
	}
	return pol, nil
}

// parseHostRule parses one AllowHosts entry.
func parseHostRule(s string) (hostRule, error) {
	var r hostRule
	host := s
	if h, port, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return r, errors.New("port must be 1 to 65535")
		}
		host, r.port = h, n
	}
	switch {
	case host == "*":
		r.any = true
		return r, nil
	case strings.HasPrefix(host, "*."):
		name, err := canonicalName(host[2:])
		if err != nil {
			return r, err
		}
		r.suffix = "." + name
		return r, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" || a.Is4In6() {
			return r, errors.New("write an IPv4 address in IPv4 form and an IPv6 one without a zone")
		}
		r.ip = a
		return r, nil
	}
	name, err := canonicalName(host)
	if err != nil {
		return r, err
	}
	r.name = name
	return r, nil
}

// canonicalName lowercases a host name and drops one trailing dot; it
// refuses what is not a DNS name, and numbers in the forms inet_aton
// accepts ("2130706433", "0x7f000001", "127.1"), which some resolvers turn
// into addresses.
func canonicalName(host string) (string, error) {
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	if name == "" || len(name) > 253 {
		return "", fmt.Errorf("host %q: a host name is 1 to 253 characters", host)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("host %q: empty or over-long label", host)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("host %q: character %q is not allowed in a host name", host, c)
			}
		}
	}
	if last := labels[len(labels)-1]; isNumeric(last) {
		return "", fmt.Errorf("host %q: a numeric address in a non-standard form", host)
	}
	return name, nil
}

// isNumeric reports a label made of decimal digits or a 0x hex number: no
// top-level domain looks like that, but inet_aton reads it as an address.
func isNumeric(l string) bool {
	if rest, ok := strings.CutPrefix(l, "0x"); ok {
		l = rest
		return strings.Trim(l, "0123456789abcdef") == ""
	}
	return strings.Trim(l, "0123456789") == ""
}

// target is a parsed, normalized destination.
type target struct {
	scheme string
	host   string     // canonical name, or the IP's string form
	ip     netip.Addr // set when the host is an IP address
	port   int
}

// hostport is the address to dial.
func (t target) hostport() string { return net.JoinHostPort(t.host, strconv.Itoa(t.port)) }

// parseTarget parses rawURL, whose scheme must be a key of schemes (mapped
// to its default port), and normalizes its host. Errors are
// INVALID_ARGUMENT for what is not a usable URL and PERMISSION_DENIED for
// address forms the policy refuses outright.
func parseTarget(rawURL string, schemes map[string]int) (target, error) {
	var t target
	u, err := url.Parse(rawURL)
	if err != nil {
		return t, fault.New(fault.InvalidArgument, "url %q: %v", rawURL, unwrapURLError(err))
	}
	t.scheme = strings.ToLower(u.Scheme)
	def, ok := schemes[t.scheme]
	if !ok {
		return t, fault.New(fault.InvalidArgument, "url %q: scheme must be one of %s", rawURL, schemeList(schemes))
	}
	if u.Opaque != "" {
		return t, fault.New(fault.InvalidArgument, "url %q: want %s://host/...", rawURL, t.scheme)
	}
	h := u.Hostname()
	if h == "" {
		return t, fault.New(fault.InvalidArgument, "url %q has no host", rawURL)
	}
	if a, err := netip.ParseAddr(h); err == nil {
		switch {
		case a.Zone() != "":
			return t, fault.New(fault.PermissionDenied, "host %q: IPv6 zones are not allowed", h)
		case a.Is4In6():
			return t, fault.New(fault.PermissionDenied, "host %q: an IPv4-mapped IPv6 address; write the IPv4 address", h)
		}
		t.ip, t.host = a, a.String()
	} else {
		if t.host, err = canonicalName(h); err != nil {
			return t, fault.New(fault.PermissionDenied, "%v", err)
		}
	}
	t.port = def
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return t, fault.New(fault.InvalidArgument, "url %q: port must be 1 to 65535", rawURL)
		}
		t.port = n
	}
	return t, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func schemeList(schemes map[string]int) string {
	var names []string
	for _, s := range []string{"http", "https", "ws", "wss", "tcp", "mqtt", "ssl", "tls", "mqtts"} {
		if _, ok := schemes[s]; ok {
			names = append(names, s)
		}
	}
	return strings.Join(names, ", ")
}

// matches reports whether r allows host on port.
func (r hostRule) matches(t target, ports map[int]bool) bool {
	if r.port != 0 && r.port != t.port || r.port == 0 && !ports[t.port] {
		return false
	}
	switch {
	case r.any:
		return true
	case r.ip.IsValid():
		return t.ip.IsValid() && r.ip == t.ip
	case r.suffix != "":
		return !t.ip.IsValid() && strings.HasSuffix(t.host, r.suffix)
	}
	return !t.ip.IsValid() && r.name == t.host
}

// check refuses a target the policy does not allow, with PERMISSION_DENIED
// naming host and port. An IP address is also checked as the dialer checks
// it.
func (pol *policy) check(t target) error {
	ok := false
	for _, r := range pol.hosts {
		if r.matches(t, pol.ports) {
			ok = true
			break
		}
	}
	if !ok && t.ip.IsValid() && pol.ports[t.port] {
		for _, pfx := range pol.cidrs {
			if pfx.Contains(t.ip) {
				ok = true
				break
			}
		}
	}
	if !ok {
		return fault.New(fault.PermissionDenied, "host %q port %d is not allowed by the egress policy", t.host, t.port)
	}
	if t.ip.IsValid() {
		return pol.checkAddr(t.ip, t.port, t.host)
	}
	return nil
}

// checkAddr refuses a non-public address unless it is listed itself. host
// names the destination in the error.
func (pol *policy) checkAddr(a netip.Addr, port int, host string) error {
	a = a.Unmap()
	kind := addrKind(a)
	if kind == "" {
		return nil
	}
	for _, pfx := range pol.cidrs {
		if pfx.Contains(a) && pol.ports[port] {
			return nil
		}
	}
	for _, r := range pol.hosts {
		if r.ip.IsValid() && r.ip.Unmap() == a && (r.port == port || r.port == 0 && pol.ports[port]) {
			return nil
		}
	}
	return fault.New(fault.PermissionDenied, "host %q: address %s is %s, which the egress policy does not list", host, a, kind)
}

// Ranges that are not reachable from scripts unless listed, beyond what
// netip classifies.
var (
	metadataAddrs = []netip.Addr{netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("fd00:ec2::254"), netip.MustParseAddr("100.100.100.200")}
	internalPfxs  = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),     // "this network"
		netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT
		netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
		netip.MustParsePrefix("198.18.0.0/15"), // benchmarking
		netip.MustParsePrefix("64:ff9b::/96"),  // NAT64: embeds any IPv4 address
		netip.MustParsePrefix("64:ff9b:1::/48"),
		netip.MustParsePrefix("2002::/16"), // 6to4: embeds any IPv4 address
	}
)

// addrKind names why a is not a public address, or returns "".
func addrKind(a netip.Addr) string {
	for _, m := range metadataAddrs {
		if a == m {
			return "a cloud metadata address"
		}
	}
	switch {
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return "link-local"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast"
	}
	for _, p := range internalPfxs {
		if p.Contains(a) {
			return "reserved"
		}
	}
	if !a.IsGlobalUnicast() {
		return "not a unicast address"
	}
	return ""
}

// dialer returns a dialer that checks every address it connects to, after
// name resolution, so that DNS answers cannot lead it past the policy. host
// names the destination in errors.
func (pol *policy) dialer(host string, timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout: timeout,
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fault.New(fault.PermissionDenied, "host %q: cannot check dialed address %q", host, address)
			}
			return pol.checkAddr(ap.Addr(), int(ap.Port()), host)
		},
	}
}

// dial connects to t over TCP through a checking dialer.
func (pol *policy) dial(ctx context.Context, t target) (net.Conn, error) {
	if err := pol.check(t); err != nil {
		return nil, err
	}
	return pol.dialer(t.host, 0).DialContext(ctx, "tcp", t.hostport())
}
