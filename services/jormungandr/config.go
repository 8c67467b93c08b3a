package jormungandr

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/loki-iot/loki/internal/metrics"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Config configures a Jormungandr replica. It decodes from TOML (the keys
// are the toml tags); start from DefaultConfig so that omitted keys keep
// their defaults. The default policy allows nothing: list what scripts may
// reach in Policy.
type Config struct {
	// Metrics, when not nil, receives the service's request counts and
	// latencies (see docs/METRICS.md). Wiring, not TOML.
	Metrics *metrics.Registry `toml:"-"`
	// Workers is how many requests of one kind run at once per replica;
	// Queue how many more may wait before RESOURCE_EXHAUSTED.
	Workers int `toml:"workers"`
	Queue   int `toml:"queue"`
	// RequestTimeout bounds a request that carries no Jormungandr-Timeout
	// header; MaxRequestTimeout caps the header.
	RequestTimeout    time.Duration `toml:"request_timeout"`
	MaxRequestTimeout time.Duration `toml:"max_request_timeout"`
	// DrainTimeout bounds how long Run waits for running requests at shutdown.
	DrainTimeout time.Duration `toml:"drain_timeout"`

	HTTP    HTTPConfig    `toml:"http"`
	Handles HandlesConfig `toml:"handles"`
	Policy  Policy        `toml:"policy"`

	// LocalMQTTCertFile and LocalMQTTKeyFile are the client certificate
	// (PEM, with any intermediates after it) and key Jormungandr presents to
	// Loki's own MQTT listener under `loki up` when that listener requires
	// client certificates ([nats] tls_client_ca_file); without them scripts
	// cannot reach it there. Set both or neither. LocalMQTTTLS reads them,
	// relative paths against the config file's directory; `loki serve`
	// ignores them.
	LocalMQTTCertFile string `toml:"local_mqtt_cert_file"`
	LocalMQTTKeyFile  string `toml:"local_mqtt_key_file"`

	// LocalMQTT fences scripts on Loki's own MQTT listener. It is wiring,
	// not configuration: `loki up` sets it, TOML cannot.
	LocalMQTT LocalMQTT `toml:"-"`
}

// LocalMQTT is Loki's own MQTT listener, whose topics are the NATS
// server's subjects. A connection to it never logs in with the username and
// password of the request: Jormungandr logs in as Login(filters), an
// identity limited to the topic filters of the request (the tool's
// net.mqtt grants for that broker), and refuses with PERMISSION_DENIED a
// request that names none. Publish and subscribe are checked against the
// same filters before they are sent. The zero value fences nothing.
type LocalMQTT struct {
	// Addr is the listener's host:port, as natsrv.Server.MQTTAddr gives it.
	// A connection to that IP address and port is fenced; when the host is
	// unspecified (0.0.0.0, ::, "") or localhost, to any loopback address on
	// that port.
	Addr string
	// Login returns a username and password the listener accepts, allowed
	// to publish and subscribe to the topics of filters and nothing else
	// (auth.Authority.ScriptMQTT). An error that wraps
	// subjects.ErrInvalidToken is a filter no identity may hold. It must be
	// safe for concurrent use.
	Login func(filters []string) (user, pass string, err error)
	// TLS is nil when the listener takes plain TCP. Otherwise every
	// connection to the listener speaks TLS with it, whether the script's
	// URL says tcp:// or ssl://: its RootCAs verify the listener's
	// certificate (not the system roots), its Certificates hold the client
	// certificate, if any. An empty ServerName is the host the script
	// dialed, the listener's IP address. Config.LocalMQTTTLS builds it.
	// Jormungandr does not modify it.
	TLS *tls.Config
	// ClientCertRequired says the listener refuses a TLS connection without
	// a client certificate. When TLS then holds none, New logs a warning and
	// a connection to the listener fails at once with FAILED_PRECONDITION
	// naming local_mqtt_cert_file, instead of with a handshake error.
	ClientCertRequired bool
}

// localListener is a compiled LocalMQTT.
type localListener struct {
	addr  netip.Addr
	any   bool // addr is unspecified: every loopback address
	port  int
	login func(filters []string) (user, pass string, err error)
	tls   *tls.Config // nil: plain TCP
	// noCert: the listener requires a client certificate and tls has none.
	noCert bool
}

// compile checks l; a nil result fences nothing.
func (l LocalMQTT) compile() (*localListener, error) {
	if l.Addr == "" && l.Login == nil && l.TLS == nil && !l.ClientCertRequired {
		return nil, nil
	}
	if l.Addr == "" || l.Login == nil {
		return nil, fmt.Errorf("%w: LocalMQTT needs both Addr and Login", ErrConfig)
	}
	if l.ClientCertRequired && l.TLS == nil {
		return nil, fmt.Errorf("%w: LocalMQTT.ClientCertRequired needs TLS", ErrConfig)
	}
	bad := fmt.Errorf("%w: LocalMQTT.Addr %q: want an IP address and port such as 127.0.0.1:1883", ErrConfig, l.Addr)
	host, p, err := net.SplitHostPort(l.Addr)
	if err != nil {
		return nil, bad
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return nil, bad
	}
	ll := &localListener{port: port, login: l.Login, tls: l.TLS,
		noCert: l.ClientCertRequired && len(l.TLS.Certificates) == 0 && l.TLS.GetClientCertificate == nil}
	switch a, err := netip.ParseAddr(host); {
	case host == "" || strings.EqualFold(host, "localhost"):
		ll.any = true
	case err != nil:
		return nil, bad
	default:
		ll.addr = a.Unmap()
		ll.any = ll.addr.IsUnspecified()
	}
	return ll, nil
}

// is reports whether a connection to ip:port reaches the listener.
// url is the broker URL a connection to the listener dials: its address,
// or 127.0.0.1 when it listens on every address. Whether it speaks TLS is
// up to l.tls, whatever the scheme.
func (l *localListener) url() string {
	host := "127.0.0.1"
	if !l.any {
		host = l.addr.String()
	}
	return "tcp://" + net.JoinHostPort(host, strconv.Itoa(l.port))
}

func (l *localListener) is(ip netip.Addr, port int) bool {
	if l == nil || port != l.port || !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	return ip == l.addr || l.any && ip.IsLoopback()
}

// HTTPConfig configures HTTP requests.
type HTTPConfig struct {
	// MaxRequestBytes caps a request body; MaxResponseBytes a response body,
	// past which the request fails with RESOURCE_EXHAUSTED.
	MaxRequestBytes  int `toml:"max_request_bytes"`
	MaxResponseBytes int `toml:"max_response_bytes"`
	// MaxRedirects is how many redirects one request follows (0: none).
	MaxRedirects int `toml:"max_redirects"`
	// UserAgent is sent when a request sets none.
	UserAgent string `toml:"user_agent"`
}

// HandlesConfig configures WebSocket and MQTT connections.
type HandlesConfig struct {
	// Max is how many connections one replica holds at once.
	Max int `toml:"max"`
	// IdleTimeout closes a connection no call used for this long.
	IdleTimeout time.Duration `toml:"idle_timeout"`
	// MaxMessageBytes caps one message sent or received.
	MaxMessageBytes int `toml:"max_message_bytes"`
	// Buffer is how many received messages a connection keeps until they
	// are read; past it, a WebSocket stops reading and MQTT messages are
	// dropped (QoS 0) as the broker would.
	Buffer int `toml:"buffer"`
	// ReconnectMin and ReconnectMax bound the backoff between redials of a
	// WebSocket opened with reconnect; MaxReconnects is how many redials in
	// a row are tried before the connection is given up.
	ReconnectMin  time.Duration `toml:"reconnect_min"`
	ReconnectMax  time.Duration `toml:"reconnect_max"`
	MaxReconnects int           `toml:"max_reconnects"`
}

// DefaultConfig returns the defaults: an empty policy, which allows no
// destination, and ports 80, 443, 1883 and 8883 for entries that name no port.
func DefaultConfig() Config {
	n := runtime.GOMAXPROCS(0)
	return Config{
		Workers:           16 * n,
		Queue:             128 * n,
		RequestTimeout:    30 * time.Second,
		MaxRequestTimeout: 10 * time.Minute,
		DrainTimeout:      10 * time.Second,
		HTTP: HTTPConfig{
			MaxRequestBytes:  256 << 10,
			MaxResponseBytes: 512 << 10,
			MaxRedirects:     5,
			UserAgent:        "loki-jormungandr/" + Version,
		},
		Handles: HandlesConfig{
			Max:             256,
			IdleTimeout:     5 * time.Minute,
			MaxMessageBytes: 256 << 10,
			Buffer:          256,
			ReconnectMin:    100 * time.Millisecond,
			ReconnectMax:    30 * time.Second,
			MaxReconnects:   10,
		},
		Policy: Policy{AllowPorts: []int{80, 443, 1883, 8883}},
	}
}

// ErrConfig is wrapped by every error of Validate.
var ErrConfig = errors.New("invalid jormungandr config")

// Validate reports the first unusable setting, naming its TOML key.
func (c Config) Validate() error {
	type check struct {
		ok   bool
		key  string
		v    any
		want string
	}
	for _, k := range []check{
		{c.Workers >= 1, "workers", c.Workers, "must be at least 1"},
		{c.Queue >= 0, "queue", c.Queue, "must not be negative"},
		{c.RequestTimeout > 0, "request_timeout", c.RequestTimeout, "must be positive"},
		{c.MaxRequestTimeout >= c.RequestTimeout, "max_request_timeout", c.MaxRequestTimeout, "must be at least request_timeout"},
		{c.DrainTimeout > 0, "drain_timeout", c.DrainTimeout, "must be positive"},
		{c.HTTP.MaxRequestBytes >= 1, "http.max_request_bytes", c.HTTP.MaxRequestBytes, "must be at least 1"},
		{c.HTTP.MaxResponseBytes >= 1, "http.max_response_bytes", c.HTTP.MaxResponseBytes, "must be at least 1"},
		{c.HTTP.MaxRedirects >= 0 && c.HTTP.MaxRedirects <= 20, "http.max_redirects", c.HTTP.MaxRedirects, "must be 0 to 20"},
		{c.Handles.Max >= 1, "handles.max", c.Handles.Max, "must be at least 1"},
		{c.Handles.IdleTimeout >= time.Millisecond, "handles.idle_timeout", c.Handles.IdleTimeout, "must be at least 1ms"},
		{c.Handles.MaxMessageBytes >= 1, "handles.max_message_bytes", c.Handles.MaxMessageBytes, "must be at least 1"},
		{c.Handles.Buffer >= 1, "handles.buffer", c.Handles.Buffer, "must be at least 1"},
		{c.Handles.ReconnectMin > 0, "handles.reconnect_min", c.Handles.ReconnectMin, "must be positive"},
		{c.Handles.ReconnectMax >= c.Handles.ReconnectMin, "handles.reconnect_max", c.Handles.ReconnectMax, "must be at least handles.reconnect_min"},
		{c.Handles.MaxReconnects >= 0, "handles.max_reconnects", c.Handles.MaxReconnects, "must not be negative"},
	} {
		if !k.ok {
			return fmt.Errorf("%w: %s = %v: %s", ErrConfig, k.key, k.v, k.want)
		}
	}
	if err := c.checkLocalCert(); err != nil {
		return err
	}
	if _, err := c.Policy.compile(); err != nil {
		return err
	}
	_, err := c.LocalMQTT.compile()
	return err
}

// checkLocalCert refuses a client certificate without its key, and the reverse.
func (c Config) checkLocalCert() error {
	if (c.LocalMQTTCertFile == "") != (c.LocalMQTTKeyFile == "") {
		return fmt.Errorf("%w: local_mqtt_cert_file = %q, local_mqtt_key_file = %q: set both or neither",
			ErrConfig, c.LocalMQTTCertFile, c.LocalMQTTKeyFile)
	}
	return nil
}

// LocalMQTTTLS returns LocalMQTT.TLS for a listener with the certificate
// file serverCertFile (PEM) that, if clientCAFile is not "", requires
// client certificates signed by the CA in that file. Every certificate of
// serverCertFile is a root, and the only ones: a self-signed certificate,
// or one followed by its private CA, verifies. When local_mqtt_cert_file
// and local_mqtt_key_file are set (relative paths are relative to dir, the
// config file's directory), the result holds that client certificate, and
// one that clientCAFile does not sign for client authentication is an
// error: a wrong file fails at start-up, not at a script's first
// connection. Without a client certificate and with clientCAFile set,
// scripts cannot reach the listener (see LocalMQTT.ClientCertRequired).
// Errors wrap ErrConfig and name each file with its key, [nats]
// tls_cert_file for serverCertFile and [nats] tls_client_ca_file for
// clientCAFile, as `loki up` spells them.
func (c Config) LocalMQTTTLS(serverCertFile, clientCAFile, dir string) (*tls.Config, error) {
	roots, err := readCertPool("[nats] tls_cert_file", serverCertFile)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if c.LocalMQTTCertFile == "" && c.LocalMQTTKeyFile == "" {
		return tc, nil
	}
	if err := c.checkLocalCert(); err != nil {
		return nil, err
	}
	certFile, keyFile := resolvePath(dir, c.LocalMQTTCertFile), resolvePath(dir, c.LocalMQTTKeyFile)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: local_mqtt_cert_file = %q, local_mqtt_key_file = %q: %w", ErrConfig, certFile, keyFile, err)
	}
	if clientCAFile != "" {
		cas, err := readCertPool("[nats] tls_client_ca_file", clientCAFile)
		if err != nil {
			return nil, err
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("%w: local_mqtt_cert_file = %q: %w", ErrConfig, certFile, err)
		}
		inter := x509.NewCertPool()
		for _, der := range cert.Certificate[1:] {
			if c, err := x509.ParseCertificate(der); err == nil {
				inter.AddCert(c)
			}
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: cas, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			return nil, fmt.Errorf("%w: local_mqtt_cert_file = %q: the MQTT listener would refuse it, it wants a client certificate signed by [nats] tls_client_ca_file = %q: %w",
				ErrConfig, certFile, clientCAFile, err)
		}
	}
	tc.Certificates = []tls.Certificate{cert}
	return tc, nil
}

// readCertPool reads the PEM certificates of path, the value of key.
func readCertPool(key, path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s = %q: %w", ErrConfig, key, path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%w: %s = %q: no PEM certificate in it", ErrConfig, key, path)
	}
	return pool, nil
}

// resolvePath is path, relative to dir unless it is absolute: the rule of
// every file named in the service config.
func resolvePath(dir, path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}
