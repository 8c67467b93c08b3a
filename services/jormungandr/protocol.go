package jormungandr

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/loki-iot/loki/internal/fault"
)

// HeaderTimeout (request) bounds an operation, as a Go duration ("250ms"):
// the caller's remaining deadline. Every request and reply body is JSON; see
// docs/JORMUNGANDR.md.
const HeaderTimeout = "Jormungandr-Timeout"

// HTTP methods a request may use.
var httpMethods = map[string]bool{
	http.MethodGet: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodHead: true,
}

// Limits on request fields.
const (
	maxURLBytes      = 8 << 10
	maxHeaders       = 64
	maxHeaderBytes   = 8 << 10
	maxHosts         = 256
	maxTopics        = 256
	maxClientIDBytes = 256
	maxTopicBytes    = 1024
	maxCredBytes     = 1024
)

// HTTPRequest is the body of a JormungandrHTTP request.
type HTTPRequest struct {
	Method  string            `json:"method"`
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers,omitempty"`
	Body    []byte            `json:"body,omitempty"`
	// Hosts, when not empty, are the only hosts the request may reach,
	// redirects included (a script's grants); the policy applies as well.
	Hosts []string `json:"hosts,omitempty"`
}

// HTTPResponse is the reply to a JormungandrHTTP request. Header names are
// lowercase; repeated headers are joined with ", ".
type HTTPResponse struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    []byte            `json:"body"`
	// URL is where the response came from, after redirects.
	URL string `json:"url"`
}

// WSConnectRequest is the body of a JormungandrWSConnect request.
type WSConnectRequest struct {
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers,omitempty"`
	// Reconnect makes the replica redial, with exponential backoff and
	// jitter, when the connection drops; messages in flight may be lost.
	Reconnect bool `json:"reconnect,omitempty"`
	// Hosts, when not empty, are the only hosts the connection may reach.
	Hosts []string `json:"hosts,omitempty"`
}

// LocalBroker is the MQTTConnectRequest.Broker (and a script's broker)
// that means Loki's own MQTT listener (Config.LocalMQTT), on whatever
// address and port it listens. Without one it is FAILED_PRECONDITION.
const LocalBroker = "local"

// MQTTConnectRequest is the body of a JormungandrMQTTConnect request.
type MQTTConnectRequest struct {
	// Broker is tcp://host:port, mqtt://host:port (1883 by default) or
	// ssl://, tls://, mqtts:// (8883 by default), or LocalBroker.
	Broker   string `json:"broker"`
	ClientID string `json:"client_id,omitempty"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Hosts, when not empty, are the only hosts the connection may reach.
	Hosts []string `json:"hosts,omitempty"`
	// Topics, when not empty, are the MQTT topic filters the connection
	// may publish and subscribe to (a script's grants for this broker; "#"
	// is every topic); empty: any topic. On Loki's own MQTT listener
	// (Config.LocalMQTT) they are required, "#" does not count, and the
	// connection logs in with an identity limited to them whatever
	// Username and Password say.
	Topics []string `json:"topics,omitempty"`
}

// Handle names a connection held by one replica.
type Handle struct {
	// Instance is the id of the replica holding the connection.
	Instance string `json:"instance"`
	// ID names the connection within the replica.
	ID string `json:"id"`
	// Kind is "ws" or "mqtt".
	Kind string `json:"kind"`
}

// String renders h as kind:instance/id, the way errors name it.
func (h Handle) String() string { return h.Kind + ":" + h.Instance + "/" + h.ID }

// HandleRequest is the body of a request on a handle subject.
type HandleRequest struct {
	ID string `json:"id"`
	// Data is the message to send or publish.
	Data []byte `json:"data,omitempty"`
	// Binary sends a WebSocket binary message rather than a text one.
	Binary bool `json:"binary,omitempty"`
	// Topic, QoS (0 or 1) and Retain are MQTT publish and subscribe arguments.
	Topic  string `json:"topic,omitempty"`
	QoS    int    `json:"qos,omitempty"`
	Retain bool   `json:"retain,omitempty"`
	// Wait bounds a receive, as a Go duration; empty: until the request's timeout.
	Wait string `json:"wait,omitempty"`
}

// Message is a received WebSocket or MQTT message.
type Message struct {
	Data   []byte `json:"data"`
	Binary bool   `json:"binary,omitempty"`
	Topic  string `json:"topic,omitempty"`
}

// ReceiveReply is the reply to a receive: Message is nil when none arrived
// before the wait ended.
type ReceiveReply struct {
	Message *Message `json:"message,omitempty"`
}

// decodeJSON decodes one JSON object into v, refusing unknown fields and
// trailing data, naming what in errors.
func decodeJSON(data []byte, what string, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fault.New(fault.InvalidArgument, "%s: %v", what, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fault.New(fault.InvalidArgument, "%s: data after the JSON object", what)
	}
	return nil
}

// DecodeHTTPRequest decodes and validates the body of an HTTP request.
// Errors are INVALID_ARGUMENT naming the field.
func DecodeHTTPRequest(data []byte) (HTTPRequest, error) {
	var r HTTPRequest
	if err := decodeJSON(data, "http request", &r); err != nil {
		return r, err
	}
	r.Headers, r.Hosts = nilIfEmpty(r.Headers), nilIfEmptySlice(r.Hosts)
	if len(r.Body) == 0 {
		r.Body = nil
	}
	r.Method = strings.ToUpper(r.Method)
	if r.Method == "" {
		r.Method = http.MethodGet
	}
	if !httpMethods[r.Method] {
		return r, fault.New(fault.InvalidArgument, "http request: method %q must be GET, POST, PUT, PATCH, DELETE or HEAD", r.Method)
	}
	if err := checkURL(r.URL); err != nil {
		return r, err
	}
	if err := checkHeaders(r.Headers); err != nil {
		return r, err
	}
	return r, checkHosts(r.Hosts)
}

// DecodeWSConnectRequest decodes and validates the body of a WebSocket connect.
func DecodeWSConnectRequest(data []byte) (WSConnectRequest, error) {
	var r WSConnectRequest
	if err := decodeJSON(data, "ws connect request", &r); err != nil {
		return r, err
	}
	r.Headers, r.Hosts = nilIfEmpty(r.Headers), nilIfEmptySlice(r.Hosts)
	if err := checkURL(r.URL); err != nil {
		return r, err
	}
	if err := checkHeaders(r.Headers); err != nil {
		return r, err
	}
	return r, checkHosts(r.Hosts)
}

// DecodeMQTTConnectRequest decodes and validates the body of an MQTT connect.
func DecodeMQTTConnectRequest(data []byte) (MQTTConnectRequest, error) {
	var r MQTTConnectRequest
	if err := decodeJSON(data, "mqtt connect request", &r); err != nil {
		return r, err
	}
	r.Hosts, r.Topics = nilIfEmptySlice(r.Hosts), nilIfEmptySlice(r.Topics)
	if r.Broker != LocalBroker {
		if err := checkURL(r.Broker); err != nil {
			return r, err
		}
	}
	switch {
	case len(r.ClientID) > maxClientIDBytes || !printable(r.ClientID):
		return r, fault.New(fault.InvalidArgument, "mqtt connect request: client_id must be at most %d printable characters", maxClientIDBytes)
	case len(r.Username) > maxCredBytes || len(r.Password) > maxCredBytes:
		return r, fault.New(fault.InvalidArgument, "mqtt connect request: username and password must be at most %d bytes", maxCredBytes)
	case len(r.Topics) > maxTopics:
		return r, fault.New(fault.InvalidArgument, "mqtt connect request: %d topics: at most %d", len(r.Topics), maxTopics)
	}
	for _, f := range r.Topics {
		if err := checkTopic(f, true); err != nil {
			return r, fault.New(fault.InvalidArgument, "mqtt connect request: topics: %v", err)
		}
	}
	return r, checkHosts(r.Hosts)
}

// DecodeHandleRequest decodes and validates the body of a request on a
// handle subject for op ("send", "receive", ...), returning its wait, or -1
// when it gives none.
func DecodeHandleRequest(data []byte, op string) (HandleRequest, time.Duration, error) {
	var r HandleRequest
	what := op + " request"
	if err := decodeJSON(data, what, &r); err != nil {
		return r, 0, err
	}
	if len(r.Data) == 0 {
		r.Data = nil
	}
	if r.ID == "" || len(r.ID) > 64 || !printable(r.ID) {
		return r, 0, fault.New(fault.InvalidArgument, "%s: id must be 1 to 64 printable characters", what)
	}
	if r.QoS != 0 && r.QoS != 1 {
		return r, 0, fault.New(fault.InvalidArgument, "%s: qos %d must be 0 or 1", what, r.QoS)
	}
	if op == "publish" || op == "subscribe" {
		if err := checkTopic(r.Topic, op == "subscribe"); err != nil {
			return r, 0, fault.New(fault.InvalidArgument, "%s: %v", what, err)
		}
	}
	wait := time.Duration(-1)
	if r.Wait != "" {
		d, err := time.ParseDuration(r.Wait)
		if err != nil || d < 0 {
			return r, 0, fault.New(fault.InvalidArgument, "%s: wait %q must be a non-negative Go duration", what, r.Wait)
		}
		wait = d
	}
	return r, wait, nil
}

// nilIfEmpty and nilIfEmptySlice make an empty field absent, as it
// would be after encoding with omitempty.
func nilIfEmpty(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

func nilIfEmptySlice(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func checkURL(u string) error {
	if u == "" {
		return fault.New(fault.InvalidArgument, "url is required")
	}
	if len(u) > maxURLBytes {
		return fault.New(fault.InvalidArgument, "url is %d bytes: at most %d", len(u), maxURLBytes)
	}
	return nil
}

func checkHeaders(h map[string]string) error {
	if len(h) > maxHeaders {
		return fault.New(fault.InvalidArgument, "%d headers: at most %d", len(h), maxHeaders)
	}
	for k, v := range h {
		if !validHeaderName(k) {
			return fault.New(fault.InvalidArgument, "header name %q is not a valid HTTP token", k)
		}
		if len(k)+len(v) > maxHeaderBytes || strings.ContainsAny(v, "\r\n\x00") {
			return fault.New(fault.InvalidArgument, "header %q: value must be at most %d bytes without CR, LF or NUL", k, maxHeaderBytes)
		}
	}
	return nil
}

func checkHosts(hosts []string) error {
	if len(hosts) > maxHosts {
		return fault.New(fault.InvalidArgument, "%d hosts: at most %d", len(hosts), maxHosts)
	}
	for _, h := range hosts {
		if h == "" || len(h) > 253 {
			return fault.New(fault.InvalidArgument, "host %q must be 1 to 253 bytes", h)
		}
	}
	return nil
}

// checkTopic validates an MQTT topic (a filter when filter is set).
func checkTopic(t string, filter bool) error {
	if t == "" || len(t) > maxTopicBytes || !printable(t) || strings.ContainsRune(t, ' ') {
		return fmt.Errorf("topic %q must be 1 to %d printable characters without spaces", t, maxTopicBytes)
	}
	if !filter && strings.ContainsAny(t, "+#") {
		return fmt.Errorf("topic %q: wildcards + and # are only for subscribe", t)
	}
	levels := strings.Split(t, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("topic %q: # must be the whole last level", t)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("topic %q: + must be a whole level", t)
		}
	}
	return nil
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

func printable(s string) bool {
	for _, r := range s {
		if r < ' ' || r == 0x7f || r == '\uFFFD' {
			return false
		}
	}
	return true
}
