package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/loki-iot/loki/examples"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("up", `Usage: loki up [flags]

Runs an embedded NATS server with JetStream and every Loki service in one
process: Loki (scripts), Hel (storage), Fenrir (hardware), Jörmungandr
(network), Jotunheim (devices) and the gRPC gateway, with an MQTT listener
for devices: after 'loki auth add-device ID', 'jotunheim --sim --id ID' in
another terminal joins as device ID, and its sensors and actuators become
tools (see 'loki devices'). Without
--config, the built-in example tools are registered; without --board, Fenrir
serves the built-in simulated board "sim". Jörmungandr's egress policy denies
every host but the local MQTT listener unless [jormungandr.policy] in
--service-config allows more. Tools, KV, objects and
files persist in --data-dir across restarts.

NATS and MQTT clients must authenticate: on first start Loki creates an
identity per component plus a local client and admin in --data-dir/auth,
which the loki CLI uses by default (see 'loki auth' and docs/SECURITY.md).
JetStream fsyncs every write before acknowledging it ([nats] sync).
One loki up per data dir: a second is refused.

With --hub, the embedded server joins a hub (a NATS cluster, or another
loki up with --leaf-port) as a leaf node: everything keeps running locally,
with this site's own JetStream domain (--domain), and goes on working when
the uplink drops. Tools registered at the hub appear here (this site's tool
registry sources the hub's); script and device events reach the hub while
the link is up. See docs/SCALING.md.

SIGHUP reloads --config and the settings of --service-config that apply live
([log] level, [jormungandr.policy], [gateway] tokens and admin_tokens, [loki]
memory_limit_mib), and logs those that changed but need a restart.
SIGINT or SIGTERM drains running calls and exits; a second signal exits at once.`, stderr)
	config := fs.String("config", "", "tool config (TOML), reloaded when it changes and on SIGHUP; default: the built-in examples")
	serviceConfig := fs.String("service-config", "", "service settings (TOML with optional [log], [nats] (TLS, sync), [loki], [hel], [fenrir], [jormungandr], [jotunheim], [gateway] tables); SIGHUP applies what can change live")
	board := fs.String("board", "", "Fenrir boards (TOML with [[boards]]); default: the built-in simulated board \"sim\"")
	dataDir := fs.String("data-dir", defaultDataDir(), "directory for all data: JetStream (tools, KV, objects) and Hel's files (env LOKI_DATA_DIR)")
	port := fs.Int("nats-port", 4222, "NATS client port (-1 picks a free port)")
	listen := fs.String("listen", "127.0.0.1", "address the NATS server and the gRPC gateway listen on")
	grpcPort := fs.Int("grpc-port", 50051, "gRPC gateway port (-1 picks a free port, 0 turns the gateway off)")
	mqttPort := fs.Int("mqtt-port", 1883, "MQTT 3.1.1 listener port of the NATS server (-1 picks a free port, 0 turns it off)")
	concurrency := fs.Int("concurrency", 0, "tools running at once (default 4 per core)")
	hub := fs.String("hub", "", "join a hub as a leaf node: its leaf-node URL(s), comma-separated (nats-leaf://hub.example:7422)")
	hubCreds := fs.String("hub-creds", "", "with --hub: the credential this site presents to the hub (an nkey seed file or a NATS .creds file)")
	hubDomain := fs.String("hub-domain", "hub", "with --hub: the hub's JetStream domain")
	domain := fs.String("domain", "", "this site's JetStream domain (default with --hub: site-HOSTNAME; without: none)")
	leafPort := fs.Int("leaf-port", 0, "accept edge sites as leaf nodes on this port (7422 is usual; 0: off), making this loki up a hub")
	metricsFlag := addMetricsFlag(fs)
	newLog := logFlagsVar(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("up: unexpected argument %q", fs.Arg(0))
	}
	topo, err := upTopology(*hub, *hubCreds, *hubDomain, *domain, *leafPort)
	if err != nil {
		return usageMistake("up", err)
	}
	log, level, err := newLog()
	if err != nil {
		return err
	}
	// Everything that can be wrong with the input is checked before anything starts.
	tools, source, err := loadToolsFlag(*config)
	if err != nil {
		return err
	}
	if err := mustDir(*dataDir); err != nil {
		return err
	}
	svcCfg, err := loadServiceConfig(*serviceConfig, *dataDir)
	if err != nil {
		return err
	}
	fileCfg := svcCfg // as the file has it, for SIGHUP to compare with
	flagLevel := level.Level()
	if lv, set, _ := svcCfg.Log.level(flagLevel); set {
		level.Set(lv) // [log] level overrides --log-level
	}
	if *concurrency > 0 {
		svcCfg.Loki.Concurrency = *concurrency
	}
	if err := svcCfg.loadBoards(*board); err != nil {
		return err
	}
	// Every port at once, so a clash names all the flags to move.
	ports := upPorts(*listen, *port, *mqttPort, *grpcPort, metricsFlag.explicitAddr())
	if *leafPort > 0 {
		ports = append(ports, portCheck{"--leaf-port", net.JoinHostPort(*listen, strconv.Itoa(*leafPort))})
	}
	if err := checkPorts(ports); err != nil {
		return fmt.Errorf("up: %w", err)
	}

	defer logStopped(ctx, log)()
	started := time.Now()
	authDir := filepath.Join(*dataDir, "auth")
	authority, err := auth.Open(authDir)
	if err != nil {
		return err
	}
	defer authority.Close()
	nkeyUsers, users, err := authority.ServerUsers()
	if err != nil {
		return err
	}
	srvCfg := svcCfg.NATS.server(natsrv.Config{Name: "loki", DataDir: *dataDir, Host: *listen, Port: *port, MQTTPort: *mqttPort,
		Nkeys: nkeyUsers, Users: users})
	srvCfg.Domain, srvCfg.LeafPort, srvCfg.Hub = topo.domain, topo.leafPort, topo.hub
	if topo.hub != nil {
		svcCfg.NATS.hubDomain = *hubDomain
	}
	srv, err := natsrv.Start(srvCfg, log)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	authority.OnChange(srv.SetUsers)
	// Metrics listen before the components start, so /readyz answers (503)
	// while they load; deferred after srv.Shutdown, so they stop first.
	met, err := metricsFlag.start(log)
	if err != nil {
		return err
	}
	defer met.close()
	// Each component connects in-process with its own identity, so it holds
	// only the permissions subjects.RolePermissions gives its role.
	conns := map[subjects.Role]*nats.Conn{}
	for _, role := range subjects.ComponentRoles {
		opts, err := auth.ConnectOptions(auth.SeedFile(authDir, string(role)))
		if err != nil {
			return err
		}
		nc, err := srv.Connect(string(role), opts...)
		if err != nil {
			return fmt.Errorf("connect to embedded NATS as %s: %w", role, err)
		}
		defer nc.Close()
		conns[role] = nc
		met.watchNATS(string(role), nc)
	}
	nc := conns[subjects.RoleLoki]
	if topo.hub != nil {
		// A site that ran on its own before has a registry bucket without
		// the hub's source; only an admin may add it.
		if err := followHub(ctx, srv, authDir, svcCfg.registry(), log); err != nil {
			return err
		}
	}

	// Register before the services start, so the tools are in the registry's
	// first snapshot and callable the moment "Loki is up" is printed.
	if err := register(ctx, nc, log, svcCfg.registry(), tools); err != nil {
		return err
	}
	lokiCfg := svcCfg.lokiConfig(nc)
	lokiCfg.Metrics = met.reg
	lokiCfg.EventInterest = srv.Interest
	// Isolated workers connect over TCP with their own identity (the
	// child services and devices their scripts' modules call, nothing of
	// Loki's), reading its seed in the data dir themselves.
	winit := workerInit{URL: srv.ClientURL(), Creds: auth.SeedFile(authDir, string(subjects.RoleLokiWorker)), TLSCA: svcCfg.NATS.TLSCertFile,
		LogLevel: level.Level().String(), LogFormat: fs.Lookup("log-format").Value.String(), Limits: lokiCfg.Limits}
	if lokiCfg.Isolation, err = svcCfg.isolation(winit, stderr); err != nil {
		return err
	}
	lokiComp, lokiSvc, err := lokiComponent(lokiCfg, nc, log)
	if err != nil {
		return err
	}
	svcCfg.Hel.Metrics, svcCfg.Fenrir.Metrics, svcCfg.Jormungandr.Metrics, svcCfg.Jotunheim.Metrics = met.reg, met.reg, met.reg, met.reg
	helComp, err := helComponent(svcCfg.Hel, conns[subjects.RoleHel], log)
	if err != nil {
		return err
	}
	fenrirComp, err := fenrirComponent(svcCfg.Fenrir, conns[subjects.RoleFenrir], log)
	if err != nil {
		return err
	}
	mqttLine, mqttURL := "off (--mqtt-port 0)", ""
	if addr := srv.MQTTAddr(); addr != "" {
		// Scripts may reach the local MQTT listener, and nothing else by default.
		if err := svcCfg.Jormungandr.Policy.AllowAddr(addr); err != nil {
			return err
		}
		// There a script logs in as an identity fenced to its grants' topics.
		svcCfg.Jormungandr.LocalMQTT.Addr = addr
		svcCfg.Jormungandr.LocalMQTT.Login = authority.ScriptMQTT
		// With [nats] TLS, Jörmungandr speaks TLS to it (tcp:// or ssl://),
		// trusting its certificate file and presenting [jormungandr]
		// local_mqtt_cert_file when the listener wants client certificates.
		if n := svcCfg.NATS; n.TLSCertFile != "" {
			tc, err := svcCfg.Jormungandr.LocalMQTTTLS(n.TLSCertFile, n.TLSClientCAFile, filepath.Dir(*serviceConfig))
			if err != nil {
				return fmt.Errorf("service config %s: [jormungandr]: %w", orDefault(*serviceConfig), err)
			}
			svcCfg.Jormungandr.LocalMQTT.TLS = tc
			svcCfg.Jormungandr.LocalMQTT.ClientCertRequired = n.TLSClientCAFile != ""
		}
		mqttLine = srv.MQTTURL()
		mqttURL = mqttLine
	}
	netComp, err := jormungandrComponent(svcCfg.Jormungandr, conns[subjects.RoleJormungandr], log)
	if err != nil {
		return err
	}
	devComp, err := jotunheimComponent(svcCfg.Jotunheim, conns[subjects.RoleJotunheim], log)
	if err != nil {
		return err
	}
	authSvc := auth.NewService(authority, conns[subjects.RoleAuth], log)
	comps := []component{lokiComp, helComp, fenrirComp, netComp, devComp,
		{name: "auth", run: authSvc.Run, ready: authSvc.Ready()}}
	var rl *toolsReloader
	if *config != "" {
		// Edits to --config (and SIGHUP) reload its tools; see reload.go.
		if rl, err = newToolsReloader(ctx, *config, tools, nc, log); err != nil {
			return err
		}
	}
	services := []string{"loki", "hel", "fenrir", "jormungandr", "jotunheim"}
	grpcLine := "off (--grpc-port 0)"
	if *grpcPort != 0 {
		svcCfg.Gateway.Metrics = met.reg
		gwComp, addr, err := gatewayComponent(svcCfg.Gateway, conns[subjects.RoleGateway], log, grpcAddr(*listen, *grpcPort))
		if err != nil {
			return err
		}
		comps = append(comps, gwComp)
		services = append(services, "gateway")
		grpcLine = addr.String() + "  (grpcurl -plaintext " + addr.String() + " list)"
		if svcCfg.Gateway.TLSCertFile != "" {
			grpcLine = addr.String() + "  TLS (grpcurl -cacert CA " + addr.String() + " list)"
		}
	}
	// SIGHUP applies the service config's live settings, then reloads --config.
	svcRl := newServiceReloader(*serviceConfig, *dataDir, fileCfg, log, level, flagLevel, comps...)
	if svcRl != nil || rl != nil {
		comps = append(comps, reloadComponent(svcRl, rl))
	}
	met.watchComponents(comps)
	return runComponents(ctx, func() {
		// The registry may hold more than --config: tools registered before
		// a restart stay served. The banner lists what the replica serves.
		served := lokiSvc.Registry().List()
		names := make([]string, 0, len(served))
		for _, t := range served {
			names = append(names, t.Def.GetName())
		}
		try := tryLines(served, srv.ClientURL(), *port, svcCfg.NATS.TLSCertFile != "")
		fmt.Fprintf(stdout, `Loki is up (ready in %s)
  NATS       %s  (JetStream data in %s)
  MQTT       %s
  gRPC       %s
  metrics    %s
  services   %s
  boards     %s
  tools      %d served: %s  (%d from %s)
  auth       identities in %s (loki auth list)
  devices    %s
  try        %s
  nats CLI   %s
             %s
  stop       Ctrl-C
`, time.Since(started).Round(time.Millisecond), srv.ClientURL(), *dataDir, mqttLine, grpcLine, met.line(),
			strings.Join(services, ", "), svcCfg.boardNames(),
			len(served), strings.Join(names, ", "), len(tools), source, authDir, devicesLine(mqttURL, *dataDir), try.cli,
			natsContextCommand(authority, srv.ClientURL(), "loki", subjects.RoleClient), try.nats)
	}, comps...)
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const components = "loki, hel, fenrir, jormungandr, jotunheim, gateway, auth"
	if len(args) > 0 && isHelp(args[0]) {
		serveUsage(ctx, stdout, strings.Split(components, ", "))
		return nil
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usageMistake("serve", errors.New("serve: name a component: "+components))
	}
	name, args := args[0], args[1:]
	switch name {
	case "loki", "hel", "fenrir", "jormungandr", "jotunheim", "gateway", "auth":
	default:
		return &exitError{code: 2, err: fmt.Errorf("serve: unknown component %q (components: %s)", name, components)}
	}
	fs := newFlags("serve "+name, fmt.Sprintf("Usage: loki serve %s --nats-url URL [flags]\n\n%s", name, serveHelp[name]), stderr)
	nf := addNATSFlags(fs, subjects.Role(name))
	serviceConfig := fs.String("service-config", "", "service settings (TOML with optional [log], [loki], [hel], [fenrir], [jormungandr], [jotunheim], [gateway] tables); SIGHUP applies what can change live")
	var config, dataDir, grpcListen, board *string
	var sim *bool
	var concurrency *int
	switch name {
	case "loki":
		config = fs.String("config", "", "tool config (TOML) to register at start, reloaded when it changes and on SIGHUP; none by default")
		concurrency = fs.Int("concurrency", 0, "tools running at once (default 4 per core)")
	case "hel":
		dataDir = fs.String("data-dir", defaultDataDir(), "directory for Hel's files, and auth/hel.nk the default --creds (env LOKI_DATA_DIR)")
		nf.dataDir = dataDir
	case "fenrir":
		board = fs.String("board", "", "the boards this instance owns (TOML with [[boards]]; see docs/FENRIR.md)")
		sim = fs.Bool("sim", false, "serve the built-in simulated board \"sim\" instead of --board")
	case "gateway":
		grpcListen = fs.String("grpc-listen", "127.0.0.1:50051", "address the gRPC gateway listens on")
	}
	metricsFlag := addMetricsFlag(fs)
	newLog := logFlagsVar(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageMistake("serve "+name, fmt.Errorf("serve %s: unexpected argument %q", name, fs.Arg(0)))
	}
	log, level, err := newLog()
	if err != nil {
		return err
	}
	dir := ""
	if dataDir != nil {
		dir = *dataDir
	}
	defer logStopped(ctx, log)()
	svcCfg, err := loadServiceConfig(*serviceConfig, dir)
	if err != nil {
		return err
	}
	fileCfg := svcCfg // as the file has it, for SIGHUP to compare with
	flagLevel := level.Level()
	if lv, set, _ := svcCfg.Log.level(flagLevel); set {
		level.Set(lv) // [log] level overrides --log-level
	}
	if name == "fenrir" {
		switch {
		case *board == "" && !*sim:
			return &exitError{code: 2, err: errors.New("serve fenrir: --board FILE is required (or --sim for the built-in simulated board)")}
		case *board != "" && *sim:
			return &exitError{code: 2, err: errors.New("serve fenrir: give --board or --sim, not both")}
		}
		if err := svcCfg.loadBoards(*board); err != nil {
			return err
		}
	}
	var tools []*loki.Compiled
	if config != nil && *config != "" {
		if tools, _, err = loadToolsFlag(*config); err != nil {
			return err
		}
	}
	credOpts, err := nf.options()
	if err != nil {
		return err
	}
	met, err := metricsFlag.start(log)
	if err != nil {
		return err
	}
	defer met.close()
	nc, err := natsrv.Dial(ctx, *nf.url, name, log, credOpts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	met.watchNATS(name, nc)
	svcCfg.Gateway.Metrics = met.reg
	svcCfg.Hel.Metrics, svcCfg.Fenrir.Metrics, svcCfg.Jormungandr.Metrics, svcCfg.Jotunheim.Metrics = met.reg, met.reg, met.reg, met.reg
	var comp component
	var rl *toolsReloader
	switch name {
	case "loki":
		if err := register(ctx, nc, log, svcCfg.registry(), tools); err != nil {
			return err
		}
		if *concurrency > 0 {
			svcCfg.Loki.Concurrency = *concurrency
		}
		lokiCfg := svcCfg.lokiConfig(nc)
		lokiCfg.Metrics = met.reg
		winit := workerInit{URL: *nf.url, Creds: nf.credsPath(), TLSCA: *nf.tlsCA, TLSCert: *nf.tlsCert, TLSKey: *nf.tlsKey,
			LogLevel: level.Level().String(), LogFormat: fs.Lookup("log-format").Value.String(), Limits: lokiCfg.Limits}
		if lokiCfg.Isolation, err = svcCfg.isolation(winit, stderr); err != nil {
			return err
		}
		comp, _, err = lokiComponent(lokiCfg, nc, log)
		if err == nil && *config != "" {
			rl, err = newToolsReloader(ctx, *config, tools, nc, log)
		}
	case "hel":
		if err = mustDir(dir); err == nil {
			comp, err = helComponent(svcCfg.Hel, nc, log)
		}
	case "fenrir":
		comp, err = fenrirComponent(svcCfg.Fenrir, nc, log)
	case "jormungandr":
		comp, err = jormungandrComponent(svcCfg.Jormungandr, nc, log)
	case "jotunheim":
		comp, err = jotunheimComponent(svcCfg.Jotunheim, nc, log)
	case "auth":
		b := auth.NewBucketBroker(nc, log)
		comp = component{name: "auth", run: b.Run, ready: b.Ready()}
	case "gateway":
		var addr net.Addr
		comp, addr, err = gatewayComponent(svcCfg.Gateway, nc, log, *grpcListen)
		if err == nil {
			log.Info("gRPC gateway listening", "addr", addr.String())
		}
	}
	if err != nil {
		return err
	}
	comps := []component{comp}
	// SIGHUP applies the service config's live settings, then reloads --config.
	svcRl := newServiceReloader(*serviceConfig, dir, fileCfg, log, level, flagLevel, comp)
	if svcRl != nil || rl != nil {
		comps = append(comps, reloadComponent(svcRl, rl))
	}
	met.watchComponents(comps)
	if met.srv != nil {
		log.Info("metrics listening", "url", met.srv.URL()+"/metrics")
	}
	return runComponents(ctx, func() { log.Info("ready", "component", name, "nats", nc.ConnectedUrl()) }, comps...)
}

// serveHelp says what running one more instance of each component does.
var serveHelp = map[string]string{
	"loki": `Runs one Loki replica (the script service) against an external NATS server
with JetStream. Run as many as you like: replicas share calls through a queue
group and tools through the JetStream KV registry.`,
	"hel": `Runs one Hel replica (storage: KV, objects, files, cache) against an external
NATS server with JetStream. Replicas share requests through a queue group; KV,
objects and the cache live in JetStream, files on each replica's --data-dir.`,
	"fenrir": `Runs one Fenrir instance (hardware) for the boards wired to this host. Each
board is owned by one instance: subjects carry the board name, and an instance
refuses to start when another already serves one of its boards. Run one per
host, each with its own --board file.`,
	"jormungandr": `Runs one Jörmungandr replica (network: HTTP, WebSocket, MQTT) against an
external NATS server. Replicas share requests through a queue group; calls on a
WebSocket or MQTT handle go to the replica holding it. The egress policy comes
from [jormungandr.policy] in --service-config and denies everything by default.`,
	"jotunheim": `Runs one Jotunheim replica (the device service: registry, presence, device
tools, commands) against an external NATS server with JetStream and its MQTT
listener, where devices connect. Replicas share device messages and requests
through queue groups and the registry through the JetStream KV bucket
jotunheim_devices. Settings come from [jotunheim] in --service-config; Loki
replicas need its Lua module (built in) for the device tools.`,
	"gateway": `Runs one gRPC gateway against an external NATS server. Gateways hold no
state: run as many as you like behind a load balancer.`,
	"auth": `Runs the bucket broker against an external NATS server whose users come
from 'loki auth export': Hel may not create streams, so it asks the broker
(loki.auth.hel.bucket), which creates only Hel's buckets, with only their own
subjects. 'loki up' runs it in its identity service; with 'loki serve hel',
run one (or more) of these with the auth identity (auth/auth.nk). Identities
are managed with 'loki auth' and exported; this serves none of that.`,
}

// loadToolsFlag loads --config, or the built-in examples when path is empty.
func loadToolsFlag(path string) ([]*loki.Compiled, string, error) {
	if path != "" {
		tools, err := loki.LoadTools(path) // its errors name the file
		if err != nil {
			return nil, "", err
		}
		if err := checkGrants(tools); err != nil {
			return nil, "", fmt.Errorf("%s: %w", path, err)
		}
		return tools, path, nil
	}
	var all []*loki.Compiled
	for _, name := range examples.ToolFiles {
		data, err := fs.ReadFile(examples.FS, name)
		if err != nil {
			return nil, "", err
		}
		tools, err := loki.ParseTools("built-in examples/"+name, data, examples.FS)
		if err != nil {
			return nil, "", err
		}
		all = append(all, tools...)
	}
	return all, "built-in examples", checkGrants(all)
}

// register opens the registry, creating its bucket as rc says, and
// stores tools.
func register(ctx context.Context, nc *nats.Conn, log *slog.Logger, rc loki.RegistryConfig, tools []*loki.Compiled) error {
	reg, err := loki.OpenRegistryConfig(ctx, nc, log, rc)
	if err != nil {
		return err
	}
	if len(tools) == 0 {
		return nil
	}
	if err := reg.Put(ctx, tools...); err != nil {
		return err
	}
	log.Debug("tools registered", "count", len(tools))
	return nil
}

// devicesLine is the banner's hint for starting a device: its login, then
// the agent, with --broker and --login when the MQTT listener or the data
// dir is not the one the agent looks for by default.
func devicesLine(mqttURL, dataDir string) string {
	if mqttURL == "" {
		return "no MQTT listener (--mqtt-port 0): devices cannot connect"
	}
	add, agent := "loki auth add-device demo", "jotunheim --sim --id demo"
	if mqttURL != "tcp://127.0.0.1:1883" {
		agent += " --broker " + mqttURL
	}
	if dataDir != defaultDataDir() {
		add += " --data-dir " + dataDir
		agent += " --login " + filepath.Join(dataDir, "auth", "devices", "demo.json")
	}
	return add + ", then in another terminal: " + agent + "  (see loki devices)"
}

// tryCommands are the banner's example calls.
type tryCommands struct{ cli, nats string }

// tryLines returns example calls of a served tool: add when served (the
// built-in example), else the first. The CLI line names the NATS URL when
// the port is not the CLI's default, and the CA when the server has TLS.
func tryLines(served []*loki.Compiled, url string, port int, tls bool) tryCommands {
	if len(served) == 0 {
		return tryCommands{cli: "loki tools register FILE  (no tools are served yet)", nats: "nats micro ls"}
	}
	tool := served[0]
	for _, t := range served {
		if t.Def.GetName() == "add" {
			tool = t
			break
		}
	}
	name := tool.Def.GetName()
	subj, err := subjects.ToolExec(name)
	if err != nil {
		subj = subjects.LokiExecPrefix + ".TOOL" // not reached: registered names are valid
	}
	cli := []string{"loki", "call", name}
	var js []string
	if name == "add" {
		cli = append(cli, "a=1", "b=2")
		js = append(js, `"a":1`, `"b":2`)
	} else {
		for _, p := range tool.Def.GetParams() {
			if !p.GetRequired() {
				continue
			}
			v, j := "VALUE", `"VALUE"`
			switch p.GetType() {
			case "number", "integer":
				v, j = "1", "1"
			case "boolean":
				v, j = "true", "true"
			case "string":
				v, j = "text", `"text"`
			}
			cli = append(cli, p.GetName()+"="+v)
			js = append(js, fmt.Sprintf("%q:%s", p.GetName(), j))
		}
	}
	if port != 4222 && port != 0 || tls {
		cli = append(cli, "--nats-url", url)
	}
	if tls {
		cli = append(cli, "--tls-ca", "CA")
	}
	return tryCommands{
		cli:  strings.Join(cli, " "),
		nats: "nats req " + subj + " '{" + strings.Join(js, ",") + "}'",
	}
}

// portCheck is one address `loki up` listens on and the flag that moves it.
type portCheck struct{ flag, addr string }

// upPorts are the fixed ports `loki up` will listen on: -1 (a free port)
// and 0 (off) need no check; metrics only when the address was chosen
// (the default address busy only turns metrics off).
func upPorts(host string, natsPort, mqttPort, grpcPort int, metricsAddr string) []portCheck {
	if natsPort == 0 {
		natsPort = 4222 // natsrv's default
	}
	var checks []portCheck
	for _, p := range []struct {
		flag string
		port int
	}{{"--nats-port", natsPort}, {"--mqtt-port", mqttPort}, {"--grpc-port", grpcPort}} {
		if p.port > 0 {
			checks = append(checks, portCheck{p.flag, net.JoinHostPort(host, strconv.Itoa(p.port))})
		}
	}
	if metricsAddr != "" {
		// An address, not a port: name it as given.
		checks = append(checks, portCheck{"--metrics-listen " + metricsAddr, metricsAddr})
	}
	return checks
}

// checkPorts listens on every address at once (so one port given to two
// flags clashes too), closes them again, and reports every one that
// cannot be listened on in a single error naming its flag.
func checkPorts(checks []portCheck) error {
	var problems []string
	ports := false
	for _, c := range checks {
		l, err := net.Listen("tcp", c.addr)
		if err == nil {
			defer l.Close()
			continue
		}
		_, port, _ := net.SplitHostPort(c.addr)
		if errors.Is(err, syscall.EADDRINUSE) {
			problems = append(problems, fmt.Sprintf("port %s (%s) is in use", port, c.flag))
		} else {
			problems = append(problems, fmt.Sprintf("cannot listen on %s (%s): %v", c.addr, c.flag, err))
		}
		ports = ports || !strings.HasPrefix(c.flag, "--metrics-listen")
	}
	if len(problems) == 0 {
		return nil
	}
	move := "move it with that flag"
	if len(problems) > 1 {
		move = "move them with those flags"
	}
	if ports {
		move += " (-1 picks a free port)"
	}
	return fmt.Errorf("%s: %s", strings.Join(problems, "; "), move)
}

// logStopped returns the function, to defer before anything starts, that
// logs the one line saying everything has stopped, with how long stopping
// took since ctx was cancelled (the signal).
func logStopped(ctx context.Context, log *slog.Logger) func() {
	var mu sync.Mutex
	var at time.Time
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		at = time.Now()
		mu.Unlock()
	})
	return func() {
		stop()
		mu.Lock()
		t := at
		mu.Unlock()
		if t.IsZero() {
			log.Info("stopped")
			return
		}
		log.Info("stopped", "took", time.Since(t).Round(time.Millisecond))
	}
}

func defaultDataDir() string {
	if d := os.Getenv("LOKI_DATA_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "loki")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "loki")
	}
	return "loki-data"
}

// natsContextCommand is the nats CLI command that saves (and selects) a
// context named ctxName for the built-in identity of role.
func natsContextCommand(a *auth.Authority, url, ctxName string, role subjects.Role) string {
	id, err := a.Get(string(role))
	if err != nil {
		return ""
	}
	return natsContextSave(ctxName, url, auth.SeedFile(a.Dir(), string(role)), id.PublicKey, role)
}

// topology is where `loki up`'s server sits: alone, as a hub that accepts
// edge sites, or as an edge site of a hub.
type topology struct {
	domain   string
	leafPort int
	hub      *natsrv.HubConfig
}

// upTopology checks --hub, --hub-creds, --hub-domain, --domain and
// --leaf-port. Without any of them `loki up` runs as it always has.
func upTopology(hub, creds, hubDomain, domain string, leafPort int) (topology, error) {
	t := topology{domain: domain, leafPort: leafPort}
	if hub == "" {
		if creds != "" {
			return t, errors.New("up: --hub-creds needs --hub")
		}
		return t, nil
	}
	if hubDomain == "" {
		return t, errors.New("up: --hub-domain must not be empty with --hub")
	}
	if t.domain == "" {
		host, _ := os.Hostname()
		t.domain = "site-" + strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
				return r
			}
			return '-'
		}, host)
	}
	if t.domain == hubDomain {
		return t, fmt.Errorf("up: --domain %q is the hub's: every site needs a JetStream domain of its own", domain)
	}
	if creds != "" {
		if _, err := os.Stat(creds); err != nil {
			return t, fmt.Errorf("up: --hub-creds: %w", err)
		}
	}
	t.hub = &natsrv.HubConfig{URLs: strings.Split(hub, ","), CredsFile: creds}
	return t, nil
}

// followHub makes the site's tool registry source the hub's, as this
// site's admin (Loki itself may create the bucket but not change it).
func followHub(ctx context.Context, srv *natsrv.Server, authDir string, rc loki.RegistryConfig, log *slog.Logger) error {
	opts, err := auth.ConnectOptions(auth.SeedFile(authDir, string(subjects.RoleAdmin)))
	if err != nil {
		return err
	}
	nc, err := srv.Connect("loki-up-admin", opts...)
	if err != nil {
		return fmt.Errorf("connect to embedded NATS as admin: %w", err)
	}
	defer nc.Close()
	_, err = loki.OpenRegistryConfig(ctx, nc, log, rc)
	return err
}
