// Package natsrv runs an in-process nats-server with JetStream, or connects
// to an external NATS server instead. `loki up` and the tests use it.
package natsrv

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Config describes an embedded server.
type Config struct {
	// Name is the server name; JetStream and MQTT need one. Default "loki".
	Name string
	// DataDir holds the JetStream file store (nats-server uses DataDir/jetstream).
	DataDir string
	// Host is the client listen address. Default 127.0.0.1.
	Host string
	// Port is the client port: 0 means 4222, -1 a random free port.
	Port int
	// MQTTPort enables the MQTT 3.1.1 listener on Host when non-zero; -1 picks a random port.
	MQTTPort int
	// MaxPayload caps one message in bytes; 0 keeps the server default (1 MiB).
	MaxPayload int32
	// ReadyTimeout bounds start-up. Default 10s.
	ReadyTimeout time.Duration
	// Nkeys and Users turn authentication on: with either set, every client
	// (in-process, TCP or MQTT) must be one of them. With neither, the
	// server accepts anyone: tests of a single component only.
	Nkeys []*server.NkeyUser
	Users []*server.User
	// SyncAlways fsyncs every JetStream write before it is acknowledged:
	// the only setting under which an acknowledged write on a single node
	// survives a power cut. Without it, writes reach the OS page cache
	// before the ack (they survive a crash of the process, not of the
	// machine) and are fsynced every SyncInterval; zero keeps the server
	// default, 2 minutes. See docs/BENCHMARKS.md (durability) for the cost.
	SyncInterval time.Duration
	SyncAlways   bool
	// TLS turns on TLS for the client port and the MQTT listener. In-process
	// connections (Connect) never use it.
	TLS *TLSConfig
	// Cluster, when set, makes this server one node of a cluster: the
	// nodes share one subject space and JetStream replicates streams
	// created with more than one replica across them (RAFT: a stream of
	// R replicas accepts writes while a majority of them is up).
	Cluster *ClusterConfig
	// Domain is the JetStream domain of this server ("" for none). In a
	// hub-and-edge layout every site (the hub cluster, each edge) has its
	// own, so each keeps its streams to itself and reaches another's by
	// naming its domain (a bucket sourced from the hub, say).
	Domain string
	// LeafPort, when non-zero, accepts leaf-node connections from edge
	// sites on Host (-1 picks a random port; see LeafURL). They
	// authenticate as the server's users (Nkeys, Users).
	LeafPort int
	// Hub, when set, connects this server to a hub as a leaf node.
	Hub *HubConfig
}

// ClusterConfig is one node's view of its cluster.
type ClusterConfig struct {
	// Name is the cluster's name, the same on every node. Required.
	Name string
	// Host is the route listen address. Default: Config.Host.
	Host string
	// Port is the route port: -1 picks a random one (see RouteURL).
	Port int
	// Routes are the route URLs (nats-route://host:port) of the other
	// nodes; listing the node itself is harmless, so every node may be
	// given the same list.
	Routes []string
}

// HubConfig is how an edge site's server reaches the hub.
type HubConfig struct {
	// URLs are the hub's leaf-node URLs (nats-leaf://host:7422 or
	// nats://host:7422); the server tries them in turn and reconnects
	// for as long as it runs.
	URLs []string
	// CredsFile is the credential the leaf connection presents: an nkey
	// seed file (as `loki auth add` writes) or a NATS .creds file. Empty
	// when the URL carries user:password or the hub needs none.
	CredsFile string
}

// TLSConfig is the server's certificate and, optionally, the CA that
// client certificates must be signed by. Paths are used as given.
type TLSConfig struct {
	CertFile, KeyFile string
	// ClientCAFile, when set, makes TCP and MQTT clients present a
	// certificate signed by this CA; the handshake fails without one.
	ClientCAFile string
}

// Load reads the files and returns the server's TLS configuration (TLS 1.2
// or later, nats-server's cipher suites). Start calls it; call it first to
// report a bad certificate before anything starts.
func (c *TLSConfig) Load() (*tls.Config, error) {
	if c.CertFile == "" || c.KeyFile == "" {
		return nil, errors.New("natsrv: TLS needs both a certificate and a key file")
	}
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: c.CertFile, KeyFile: c.KeyFile,
		CaFile: c.ClientCAFile, Verify: c.ClientCAFile != "",
	})
	if err != nil {
		return nil, fmt.Errorf("natsrv: TLS: %w", err)
	}
	return tc, nil
}

// AuthEnabled reports whether clients must authenticate.
func (c Config) AuthEnabled() bool { return len(c.Nkeys) > 0 || len(c.Users) > 0 }

// Server is a running embedded nats-server.
type Server struct {
	ns  *server.Server
	cfg Config

	mu   sync.Mutex // serialises reloads of opts
	opts *server.Options
}

// tlsTimeout bounds a TLS handshake, in seconds (nats-server's default).
const tlsTimeout = 2

// ErrNotReady is returned when the server does not accept connections in time.
var ErrNotReady = errors.New("embedded NATS server not ready")

// Start starts an embedded server and waits until it accepts connections.
// The caller must call Shutdown.
func Start(cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.Name == "" {
		cfg.Name = "loki"
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = 4222
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.DataDir == "" {
		return nil, errors.New("natsrv: DataDir is required for the JetStream store")
	}
	// nats-server keeps its store in StoreDir/jetstream.
	storeDir := cfg.DataDir
	if err := os.MkdirAll(storeDir, 0o750); err != nil {
		return nil, fmt.Errorf("natsrv: create store dir: %w", err)
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		Host:       cfg.Host,
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   storeDir,
		MaxPayload: cfg.MaxPayload,
		NoSigs:     true, // signals are handled once, in main
		Nkeys:      cfg.Nkeys,
		Users:      cfg.Users,
		SyncAlways: cfg.SyncAlways,
	}
	if cfg.SyncInterval > 0 {
		opts.SyncInterval = cfg.SyncInterval
	}
	if err := cfg.topology(opts); err != nil {
		return nil, err
	}
	if cfg.TLS != nil {
		tc, err := cfg.TLS.Load()
		if err != nil {
			return nil, err
		}
		opts.TLSConfig, opts.TLSVerify, opts.TLSTimeout = tc, cfg.TLS.ClientCAFile != "", tlsTimeout
	}
	if cfg.MQTTPort == -1 {
		// The server has no accessor for a random MQTT port, so pick one.
		port, err := freePort(cfg.Host)
		if err != nil {
			return nil, fmt.Errorf("natsrv: pick MQTT port: %w", err)
		}
		cfg.MQTTPort = port
	}
	if cfg.MQTTPort != 0 {
		opts.MQTT = server.MQTTOpts{Host: cfg.Host, Port: cfg.MQTTPort}
		if opts.TLSConfig != nil {
			// Same certificate and client-certificate rule as the client
			// port; devices still log in with their username and password.
			opts.MQTT.TLSConfig, opts.MQTT.TLSTimeout = opts.TLSConfig, tlsTimeout
		}
	}
	// nats-server only logs a failed listen and never becomes ready; say so
	// at once instead of after ReadyTimeout.
	if cfg.Port > 0 {
		if err := checkFree(cfg.Host, cfg.Port); err != nil {
			return nil, fmt.Errorf("natsrv: cannot listen on %s:%d (another NATS server or `loki up` running? pick another port): %w", cfg.Host, cfg.Port, err)
		}
	}
	if cfg.MQTTPort > 0 {
		if err := checkFree(cfg.Host, cfg.MQTTPort); err != nil {
			return nil, fmt.Errorf("natsrv: cannot listen for MQTT on %s:%d (another MQTT broker or `loki up` running? pick another port, or 0 for none): %w", cfg.Host, cfg.MQTTPort, err)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsrv: %w", err)
	}
	if log != nil {
		ns.SetLoggerV2(&logAdapter{log: log.With("component", "nats-server")}, false, false, false)
	}
	go ns.Start()
	if !ns.ReadyForConnections(cfg.ReadyTimeout) {
		ns.Shutdown()
		return nil, fmt.Errorf("%w within %s (is port %d in use?)", ErrNotReady, cfg.ReadyTimeout, cfg.Port)
	}
	return &Server{ns: ns, cfg: cfg, opts: opts.Clone()}, nil
}

// topology applies Cluster, Domain, LeafPort and Hub to opts.
func (cfg *Config) topology(opts *server.Options) error {
	opts.JetStreamDomain = cfg.Domain
	if c := cfg.Cluster; c != nil {
		if c.Name == "" {
			return errors.New("natsrv: a cluster needs a name")
		}
		host := c.Host
		if host == "" {
			host = cfg.Host
		}
		port := c.Port
		if port == -1 {
			p, err := freePort(host)
			if err != nil {
				return fmt.Errorf("natsrv: pick route port: %w", err)
			}
			port, c.Port = p, p
		}
		opts.Cluster = server.ClusterOpts{Name: c.Name, Host: host, Port: port}
		for _, r := range c.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return fmt.Errorf("natsrv: route %q: want nats-route://host:port", r)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	if cfg.LeafPort != 0 {
		port := cfg.LeafPort
		if port == -1 {
			p, err := freePort(cfg.Host)
			if err != nil {
				return fmt.Errorf("natsrv: pick leaf-node port: %w", err)
			}
			port, cfg.LeafPort = p, p
		}
		opts.LeafNode.Host, opts.LeafNode.Port = cfg.Host, port
	}
	if h := cfg.Hub; h != nil {
		if len(h.URLs) == 0 {
			return errors.New("natsrv: a hub needs at least one URL")
		}
		remote := &server.RemoteLeafOpts{DenyImports: subjects.LeafLocal, DenyExports: subjects.LeafLocal}
		for _, s := range h.URLs {
			u, err := url.Parse(s)
			if err != nil || u.Host == "" {
				return fmt.Errorf("natsrv: hub URL %q: want nats-leaf://host:port", s)
			}
			remote.URLs = append(remote.URLs, u)
		}
		if h.CredsFile != "" {
			data, err := os.ReadFile(h.CredsFile)
			if err != nil {
				return fmt.Errorf("natsrv: hub credential: %w", err)
			}
			if bytes.Contains(data, []byte("BEGIN NATS USER JWT")) {
				remote.Credentials = h.CredsFile
			} else if seed := bytes.TrimSpace(data); bytes.HasPrefix(seed, []byte("SU")) {
				remote.Nkey = string(seed)
			} else {
				return fmt.Errorf("natsrv: hub credential %s: want an nkey seed (SU...) or a .creds file", h.CredsFile)
			}
		}
		// Retry the hub often: an edge site's uplink comes and goes.
		opts.LeafNode.ReconnectInterval = time.Second
		opts.LeafNode.Remotes = []*server.RemoteLeafOpts{remote}
	}
	return nil
}

// SetUsers replaces the server's users without a restart. Connections of
// users that are gone, or whose credentials no longer match, are closed;
// the others keep running with their new permissions.
func (s *Server) SetUsers(nkeys []*server.NkeyUser, users []*server.User) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.opts.Clone()
	next.Nkeys, next.Users = nkeys, users
	if err := s.ns.ReloadOptions(next); err != nil {
		return fmt.Errorf("natsrv: reload users: %w", err)
	}
	s.opts = next
	return nil
}

// RouteURL is the nats-route:// URL other cluster nodes route to, or ""
// when the server is not clustered.
func (s *Server) RouteURL() string {
	c := s.cfg.Cluster
	if c == nil {
		return ""
	}
	host := c.Host
	if host == "" {
		host = s.cfg.Host
	}
	return "nats-route://" + net.JoinHostPort(host, strconv.Itoa(c.Port))
}

// LeafURL is the nats-leaf:// URL edge sites connect to, or "" when the
// server accepts no leaf nodes.
func (s *Server) LeafURL() string {
	if s.cfg.LeafPort == 0 {
		return ""
	}
	return "nats-leaf://" + net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.LeafPort))
}

// LeafConnected reports whether this server has at least one leaf-node
// connection up (to its hub, or from an edge site).
func (s *Server) LeafConnected() bool { return s.ns.NumLeafNodes() > 0 }

// ClientURL is the URL clients on this machine connect to: nats://, or
// tls:// when the client port uses TLS.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Interest reports whether any subscription in the server's account of
// clients (the global account every identity belongs to) matches subject:
// local clients, JetStream streams, and subscribers across routes and
// leaf-node links, whose interest the server tracks. It is a lookup in the
// server's subscription table, cached per subject.
func (s *Server) Interest(subject string) bool {
	return s.ns.GlobalAccount().SubscriptionInterest(subject)
}

// MQTTAddr is host:port of the MQTT listener, or "" when it is off.
func (s *Server) MQTTAddr() string {
	if s.cfg.MQTTPort == 0 {
		return ""
	}
	return net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.MQTTPort))
}

// MQTTURL is the broker URL MQTT clients (paho) connect to: tcp://host:port,
// or ssl://host:port when the listener uses TLS; "" when it is off.
func (s *Server) MQTTURL() string {
	addr := s.MQTTAddr()
	switch {
	case addr == "":
		return ""
	case s.cfg.TLS != nil:
		return "ssl://" + addr
	}
	return "tcp://" + addr
}

// checkFree reports whether host:port can be listened on now.
func checkFree(host string, port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return l.Close()
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Connect opens an in-process client connection (no TCP) with opts appended.
func (s *Server) Connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.Name(name), nats.InProcessServer(s.ns)}, opts...)
	return nats.Connect("", opts...)
}

// Shutdown stops the server and waits for it to finish, flushing JetStream.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// Reconnect backoff of Dial: full jitter, a random wait in [0, min(cap,
// base·2^attempts)) (AWS, "Exponential Backoff and Jitter"), so a fleet of
// replicas that lost the same server does not come back in lockstep.
const (
	reconnectBase = 100 * time.Millisecond
	reconnectCap  = 5 * time.Second
)

// ReconnectDelay is the wait before reconnect attempt number attempts
// (counted from 1 by nats.go over the whole server list).
func ReconnectDelay(attempts int) time.Duration {
	ceil := reconnectCap
	if attempts < 16 {
		ceil = min(reconnectCap, reconnectBase<<attempts)
	}
	return time.Duration(rand.Int64N(int64(ceil)) + 1)
}

// Dial connects a long-lived component to external NATS at url, which may
// list several servers separated by commas (the nodes of a cluster): it
// tries them in random order, learns the rest of the cluster from the
// server, and reconnects forever with full-jitter backoff, so a component
// rides through a node's restart and keeps its subscriptions. When no
// server answers at first, Dial keeps trying (logging each failure) until
// one does; it gives up only when a server refuses the credential or
// ctx ends.
func Dial(ctx context.Context, url, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	connected := make(chan struct{}, 1)
	base := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.CustomReconnectDelay(ReconnectDelay),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("NATS connected", "url", nc.ConnectedUrl())
			connected <- struct{}{}
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected; reconnecting", "err", err)
			}
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Debug("NATS reconnect attempt failed", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "url", nc.ConnectedUrl()) }),
	}
	nc, err := nats.Connect(url, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	if nc.IsConnected() {
		return nc, nil
	}
	log.Warn("NATS not reachable yet; retrying until it is", "url", url)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-connected:
			return nc, nil
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("connect to NATS at %s: %w", url, ctx.Err())
		case <-tick.C:
			if nc.IsConnected() {
				return nc, nil
			}
			if nc.IsClosed() {
				// nats.go closes after the same authentication error twice.
				err := nc.LastError()
				if err == nil {
					err = nats.ErrConnectionClosed
				}
				return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
			}
		}
	}
}

// logAdapter routes nats-server logs into slog.
type logAdapter struct{ log *slog.Logger }

func (l *logAdapter) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
