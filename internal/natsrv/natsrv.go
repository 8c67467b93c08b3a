// Package natsrv runs an in-process nats-server with JetStream, or connects
// to an external NATS server instead. `loki up` and the tests use it.
package natsrv

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

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

// ClientURL is the URL clients on this machine connect to: nats://, or
// tls:// when the client port uses TLS.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

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

// Dial connects to an external NATS server at url with reconnects forever,
// so a component survives a server restart.
func Dial(url, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
	}
	if log != nil {
		base = append(base,
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil {
					log.Warn("NATS disconnected", "err", err)
				}
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "url", nc.ConnectedUrl()) }),
		)
	}
	nc, err := nats.Connect(url, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	return nc, nil
}

// logAdapter routes nats-server logs into slog.
type logAdapter struct{ log *slog.Logger }

func (l *logAdapter) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *logAdapter) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
