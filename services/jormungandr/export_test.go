package jormungandr

import "net/netip"

// CheckHTTPURL parses rawURL as an HTTP destination and checks it against
// p, returning the canonical host and port it would dial.
func CheckHTTPURL(p Policy, rawURL string) (host string, port int, err error) {
	pol, err := p.compile()
	if err != nil {
		return "", 0, err
	}
	t, err := parseTarget(rawURL, httpSchemes)
	if err != nil {
		return "", 0, err
	}
	return t.host, t.port, pol.check(t)
}

// CheckDialedAddr checks an address the dialer is about to connect to.
func CheckDialedAddr(p Policy, a netip.Addr, port int) error {
	pol, err := p.compile()
	if err != nil {
		return err
	}
	return pol.checkAddr(a, port, a.String())
}

// AddrKind names why a is not public, or returns "".
func AddrKind(a netip.Addr) string { return addrKind(a) }

// TopicMatches reports whether the MQTT topic filter f covers topic (or
// filter) sub.
func TopicMatches(f, sub string) bool { return topicMatches(f, sub) }
