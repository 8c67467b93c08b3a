package compose_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.yaml.in/yaml/v3"
)

// composeFile is the part of the compose file the test runs.
type composeFile struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

type service struct {
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Restart     string            `yaml:"restart"`
	ReadOnly    bool              `yaml:"read_only"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

// component is the Loki component a service runs (`serve COMPONENT`), or
// "nats-server".
func (s service) component() string {
	switch {
	case len(s.Command) >= 2 && s.Command[0] == "serve":
		return s.Command[1]
	case len(s.Command) >= 1 && s.Command[0] == "nats-server":
		return "nats-server"
	}
	return ""
}

// healthURL is the URL the healthcheck asks, as the container sees it.
func (s service) healthURL() string {
	for _, a := range s.Healthcheck.Test {
		if strings.HasPrefix(a, "http://") {
			return a
		}
	}
	return ""
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	b, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return f
}

// TestComposeServices: the stack is the one the docs describe — three
// clustered nats nodes and the Loki components with their replica counts —
// and every Loki container has its own credential, the three URLs, a
// healthcheck on /readyz, a restart policy and waits for healthy nats.
func TestComposeServices(t *testing.T) {
	f := loadCompose(t)
	count := map[string]int{}
	for name, s := range f.Services {
		c := s.component()
		count[c]++
		if s.Restart == "" {
			t.Errorf("service %s: no restart policy", name)
		}
		// nats-server's /healthz is its readiness (JetStream current);
		// Loki's is /readyz.
		wantHealth := "/readyz"
		if c == "nats-server" {
			wantHealth = "/healthz"
		}
		if !strings.HasSuffix(s.healthURL(), wantHealth) {
			t.Errorf("service %s: healthcheck %q: want a GET of %s", name, s.Healthcheck.Test, wantHealth)
		}
		if c == "nats-server" || c == "" {
			continue
		}
		if got := strings.Count(s.Environment["NATS_URL"], "nats://"); got != 3 {
			t.Errorf("service %s: NATS_URL %q: got %d URLs, want 3", name, s.Environment["NATS_URL"], got)
		}
		for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
			if s.DependsOn[n].Condition != "service_healthy" {
				t.Errorf("service %s: does not wait for %s to be healthy", name, n)
			}
		}
		// Its own seed, read-only, where LOKI_CREDS points.
		want := "./secrets/" + c + ".nk:" + s.Environment["LOKI_CREDS"] + ":ro"
		if !slices.Contains(s.Volumes, want) {
			t.Errorf("service %s: volumes %q: want %q", name, s.Volumes, want)
		}
		if !s.ReadOnly {
			t.Errorf("service %s: root file system not read-only", name)
		}
	}
	want := map[string]int{"nats-server": 3, "loki": 2, "hel": 2, "jormungandr": 2, "fenrir": 1, "jotunheim": 1, "gateway": 2, "auth": 1}
	for c, n := range want {
		if count[c] != n {
			t.Errorf("%s: got %d services, want %d", c, count[c], n)
		}
	}
	if len(count) != len(want) {
		t.Errorf("components: got %v, want %v", count, want)
	}
	for _, n := range []string{"nats-1-data", "nats-2-data", "nats-3-data"} {
		if _, ok := f.Volumes[n]; !ok {
			t.Errorf("volume %s: missing", n)
		}
	}
}

// TestComposeTopology runs what docker-compose.yml describes, with no
// container runtime: compose/setup.sh makes the identities as a user would,
// each nats service becomes an in-process nats-server started from its own
// configuration file (the committed nats-N.conf with the generated
// loki-auth.conf and cluster.conf included, as mounted in its container),
// and each Loki service becomes a `loki serve` process with the service's
// command, environment and mounts. Only addresses change: container names
// and 0.0.0.0 listeners become loopback ports, container paths the files
// and volumes compose would mount there.
func TestComposeTopology(t *testing.T) {
	if testing.Short() {
		t.Skip("builds loki and runs the compose stack as processes")
	}
	f := loadCompose(t)
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "loki")
	build := exec.Command("go", "build", "-o", bin, "../cmd/loki")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build loki: %v\n%s", err, out)
	}
	// What a user runs first (compose/README.md), into a directory of its own.
	gen := filepath.Join(tmp, "compose")
	setup := exec.Command("bash", "setup.sh", gen)
	setup.Env = append(os.Environ(), "LOKI="+bin)
	if out, err := setup.CombinedOutput(); err != nil {
		t.Fatalf("setup.sh: %v\n%s", err, out)
	}
	st := &stack{t: t, f: f, tmp: tmp, gen: gen, natsURL: map[string]string{}, ports: map[string]map[string]int{}}

	var natsNames, lokiNames []string
	for name, s := range f.Services {
		if s.component() == "nats-server" {
			natsNames = append(natsNames, name)
		} else {
			lokiNames = append(lokiNames, name)
		}
	}
	sort.Strings(natsNames)
	sort.Strings(lokiNames)
	st.startNATS(natsNames)
	healthy := map[string]bool{}
	for _, n := range natsNames {
		st.waitHealthy(n, st.hostURL(n, f.Services[n].healthURL()))
		healthy[n] = true
	}
	// As compose does: a service starts once what it depends on is healthy.
	for pending := lokiNames; len(pending) > 0; {
		var wave, rest []string
		for _, n := range pending {
			ready := true
			for d := range f.Services[n].DependsOn {
				ready = ready && healthy[d]
			}
			if ready {
				wave = append(wave, n)
			} else {
				rest = append(rest, n)
			}
		}
		if len(wave) == 0 {
			t.Fatalf("services %v depend on services that never become healthy", rest)
		}
		for _, n := range wave {
			st.startLoki(n, bin)
		}
		for _, n := range wave {
			st.waitHealthy(n, st.hostURL(n, f.Services[n].healthURL()))
			healthy[n] = true
		}
		pending = rest
	}

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	urls := strings.Join(st.allNATS(natsNames), ",")
	// The bus is closed: loki-auth.conf is in force on the nodes.
	if nc, err := nats.Connect(urls); err == nil {
		nc.Close()
		t.Errorf("connected to %s without a credential", urls)
	}
	clientNC := st.connect(urls, filepath.Join(gen, "auth", "client.nk"))
	adminNC := st.connect(urls, filepath.Join(gen, "auth", "admin.nk"))

	// A tool over NATS, then through each gateway. Retried until the
	// registry has reached the replicas (loki-1 and loki-2 both register
	// tools.toml at start).
	addSubj, err := subjects.ToolExec("add")
	if err != nil {
		t.Fatal(err)
	}
	st.eventually(ctx, "add over NATS", func() error {
		msg, err := clientNC.Request(addSubj, []byte(`{"a":1,"b":2}`), 2*time.Second)
		if err != nil {
			return err
		}
		if e := msg.Header.Get(micro.ErrorHeader); e != "" {
			return errors.New(e)
		}
		if string(msg.Data) != "3" {
			return fmt.Errorf("got %s, want 3", msg.Data)
		}
		return nil
	})
	var gateways []*client.Client
	for _, n := range lokiNames {
		if f.Services[n].component() != "gateway" {
			continue
		}
		addr := st.ports[n]["50051"]
		c, err := client.Dial("127.0.0.1:"+strconv.Itoa(addr), client.WithInsecure())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		gateways = append(gateways, c)
		st.eventually(ctx, "add through "+n, func() error {
			res, _, err := c.Execute(ctx, "add", map[string]any{"a": 2, "b": 3})
			if err != nil {
				return err
			}
			if res != 5.0 {
				return fmt.Errorf("got %v, want 5", res)
			}
			return nil
		})
	}
	if len(gateways) == 0 {
		t.Fatal("no gateway in the compose file")
	}

	// Hel KV: written through Loki and Hel over NATS, read back through a
	// gateway; every call may land on either replica of each.
	for want := 1.0; want <= 3; want++ {
		var got float64
		st.eventually(ctx, "count", func() error {
			msg, err := clientNC.Request(must(subjects.ToolExec("count")), []byte(`{"name":"compose"}`), 15*time.Second)
			if err != nil {
				return err
			}
			if e := msg.Header.Get(micro.ErrorHeader); e != "" {
				return errors.New(e)
			}
			return json.Unmarshal(msg.Data, &got)
		})
		if got != want {
			t.Fatalf("count: got %v, want %v", got, want)
		}
	}
	res, _, err := gateways[len(gateways)-1].Execute(ctx, "counter", map[string]any{"name": "compose"})
	if err != nil || res != 3.0 {
		t.Fatalf("counter through the gateway: got %v, %v, want 3", res, err)
	}
	// Fenrir's simulated board, through Loki.
	if res, _, err := gateways[0].Execute(ctx, "temperature", nil); err != nil {
		t.Fatalf("temperature: %v", err)
	} else if _, ok := res.(float64); !ok {
		t.Fatalf("temperature: got %v, want a number", res)
	}

	// Every component that runs a NATS micro service answers $SRV.PING,
	// one answer per replica the compose file runs.
	want := map[string]int{}
	for _, n := range lokiNames {
		if c := f.Services[n].component(); c != "gateway" {
			want[c]++
		}
	}
	st.eventually(ctx, "$SRV.PING", func() error {
		got := ping(clientNC)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	})

	// For docs/SCALING.md's sizing: each process's resident memory after
	// this little work (go test -v shows it; nothing is asserted).
	for _, p := range st.procs {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid)); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "VmRSS:") {
					t.Logf("%s: %s", p.name, strings.Join(strings.Fields(l), " "))
				}
			}
		}
	}

	// The buckets live on the cluster with service.toml's replica count.
	js, err := jetstream.New(adminNC)
	if err != nil {
		t.Fatal(err)
	}
	counters, err := subjects.HelKVBucket("counters")
	if err != nil {
		t.Fatal(err)
	}
	for _, bucket := range []string{subjects.ToolsBucket, counters} {
		s, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			t.Fatalf("bucket %s: %v", bucket, err)
		}
		info := s.CachedInfo()
		if info.Config.Replicas != 3 {
			t.Errorf("bucket %s: got %d replicas, want 3 (service.toml [nats] replicas)", bucket, info.Config.Replicas)
		}
		if info.Cluster == nil || info.Cluster.Leader == "" {
			t.Errorf("bucket %s: no cluster leader: %+v", bucket, info.Cluster)
		}
	}
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}

// ping asks every micro service for PING and counts the answers by service
// name, until no answer has come for a while.
func ping(nc *nats.Conn) map[string]int {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil
	}
	defer sub.Unsubscribe()
	subj, err := micro.ControlSubject(micro.PingVerb, "", "")
	if err != nil || nc.PublishRequest(subj, inbox, nil) != nil {
		return nil
	}
	got := map[string]int{}
	for {
		msg, err := sub.NextMsg(300 * time.Millisecond)
		if err != nil {
			return got
		}
		var p micro.Ping
		if json.Unmarshal(msg.Data, &p) == nil {
			got[p.Name]++
		}
	}
}

// stack is the compose file's services running on loopback.
type stack struct {
	t   *testing.T
	f   composeFile
	tmp string
	gen string // setup.sh's output: auth/, secrets/, nats/loki-auth.conf
	// natsURL is each nats service's client URL.
	natsURL map[string]string
	// ports maps each service's container ports (as in "0.0.0.0:PORT") to
	// the loopback port the test gave it.
	ports map[string]map[string]int
	procs []*proc
}

// root lays out the files compose would mount into a service's container
// under a directory of its own, as symlinks to the files or volumes, and
// returns it with the mount points.
func (st *stack) root(name string) (string, []string) {
	st.t.Helper()
	root := filepath.Join(st.tmp, "root", name)
	var targets []string
	for _, v := range st.f.Services[name].Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			st.t.Fatalf("service %s: volume %q: want SOURCE:TARGET[:MODE]", name, v)
		}
		src, dst := parts[0], parts[1]
		var host string
		if strings.HasPrefix(src, "./") {
			// setup.sh's output first, then the committed files.
			host = filepath.Join(st.gen, src)
			if _, err := os.Stat(host); err != nil {
				host, _ = filepath.Abs(src)
			}
			if _, err := os.Stat(host); err != nil {
				st.t.Fatalf("service %s: mount %q: %v", name, v, err)
			}
		} else {
			if _, ok := st.f.Volumes[src]; !ok {
				st.t.Fatalf("service %s: volume %q is not declared under volumes", name, src)
			}
			host = filepath.Join(st.tmp, "volumes", src)
			if err := os.MkdirAll(host, 0o700); err != nil {
				st.t.Fatal(err)
			}
		}
		at := filepath.Join(root, dst)
		if err := os.MkdirAll(filepath.Dir(at), 0o700); err != nil {
			st.t.Fatal(err)
		}
		if err := os.Symlink(host, at); err != nil {
			st.t.Fatal(err)
		}
		targets = append(targets, dst)
	}
	return root, targets
}

// rewrite turns a value from the compose file into its loopback equivalent:
// a path under a mount point into the test's copy, 0.0.0.0:PORT into a free
// loopback port, nats://nats-N:4222 into that node's URL.
func (st *stack) rewrite(name, root string, targets []string, v string) string {
	for _, dst := range targets {
		if v == dst || strings.HasPrefix(v, dst+"/") {
			return filepath.Join(root, v)
		}
	}
	if port, ok := strings.CutPrefix(v, "0.0.0.0:"); ok {
		if st.ports[name] == nil {
			st.ports[name] = map[string]int{}
		}
		p := freePort(st.t)
		st.ports[name][port] = p
		return "127.0.0.1:" + strconv.Itoa(p)
	}
	if strings.HasPrefix(v, "nats://") {
		var out []string
		for _, u := range strings.Split(v, ",") {
			pu, err := url.Parse(u)
			if err != nil {
				st.t.Fatalf("service %s: %q: %v", name, u, err)
			}
			real, ok := st.natsURL[pu.Hostname()]
			if !ok {
				st.t.Fatalf("service %s: %q names no nats service", name, u)
			}
			out = append(out, real)
		}
		return strings.Join(out, ",")
	}
	return v
}

// hostURL is a URL a service's container sees (http://127.0.0.1:PORT/...),
// on the port the test gave that container port.
func (st *stack) hostURL(name, u string) string {
	pu, err := url.Parse(u)
	if err != nil {
		st.t.Fatal(err)
	}
	p, ok := st.ports[name][pu.Port()]
	if !ok {
		st.t.Fatalf("service %s: healthcheck %s: no listener on port %s", name, u, pu.Port())
	}
	pu.Host = "127.0.0.1:" + strconv.Itoa(p)
	return pu.String()
}

// startNATS starts the nats services as one cluster, each from the
// configuration file its command names, as mounted in its container.
func (st *stack) startNATS(names []string) {
	st.t.Helper()
	clusterPort := map[string]int{}
	for _, n := range names {
		clusterPort[n] = freePort(st.t)
	}
	var servers []*server.Server
	for _, n := range names {
		s := st.f.Services[n]
		root, targets := st.root(n)
		i := slices.Index(s.Command, "--config")
		if i < 0 || i+1 >= len(s.Command) {
			st.t.Fatalf("service %s: command %q names no --config", n, s.Command)
		}
		conf := st.rewrite(n, root, targets, s.Command[i+1])
		opts, err := server.ProcessConfigFile(conf)
		if err != nil {
			st.t.Fatalf("service %s: %s: %v", n, s.Command[i+1], err)
		}
		if opts.ServerName != n {
			st.t.Errorf("service %s: server_name %q: want the service's name", n, opts.ServerName)
		}
		if !opts.JetStream || opts.Cluster.Name == "" || opts.Cluster.Username == "" || len(opts.Routes) != len(names) {
			st.t.Fatalf("service %s: want JetStream, a named cluster with route authentication and a route to each of %d nodes; got JetStream %v, cluster %q, routes %v",
				n, len(names), opts.JetStream, opts.Cluster.Name, opts.Routes)
		}
		if opts.MQTT.Port == 0 {
			st.t.Fatalf("service %s: no MQTT listener", n)
		}
		opts.StoreDir = st.rewrite(n, root, targets, opts.StoreDir)
		opts.Host, opts.Port = "127.0.0.1", -1
		// The monitoring port the healthcheck asks, wherever the file puts it.
		st.ports[n] = map[string]int{strconv.Itoa(opts.HTTPPort): freePort(st.t)}
		opts.HTTPHost, opts.HTTPPort = "127.0.0.1", st.ports[n][strconv.Itoa(opts.HTTPPort)]
		opts.Cluster.Host, opts.Cluster.Port = "127.0.0.1", clusterPort[n]
		for _, r := range opts.Routes {
			p, ok := clusterPort[r.Hostname()]
			if !ok {
				st.t.Fatalf("service %s: route %s names no nats service", n, r.Redacted())
			}
			r.Host = "127.0.0.1:" + strconv.Itoa(p)
		}
		opts.MQTT.Host, opts.MQTT.Port = "127.0.0.1", freePort(st.t)
		if opts.LeafNode.Port == 0 || opts.JetStreamDomain == "" {
			st.t.Fatalf("service %s: want a leaf-node listener and a JetStream domain for edge sites", n)
		}
		opts.LeafNode.Host, opts.LeafNode.Port = "127.0.0.1", freePort(st.t)
		opts.NoSigs = true
		ns, err := server.NewServer(opts)
		if err != nil {
			st.t.Fatalf("service %s: %v", n, err)
		}
		st.t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		if os.Getenv("COMPOSE_TEST_NATS_LOG") != "" {
			ns.ConfigureLogger()
		}
		go ns.Start()
		servers = append(servers, ns)
	}
	for i, ns := range servers {
		if !ns.ReadyForConnections(60 * time.Second) { // a bound, not a measure: a loaded CI machine is slow to start three JetStream nodes
			st.t.Fatalf("service %s: not ready", names[i])
		}
		st.natsURL[names[i]] = ns.ClientURL()
	}
}

func (st *stack) allNATS(names []string) []string {
	var urls []string
	for _, n := range names {
		urls = append(urls, st.natsURL[n])
	}
	return urls
}

// proc is one `loki serve` process and its output.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
}

// startLoki runs a Loki service as a process: its command with the
// environment compose gives it and the image's LOKI_DATA_DIR.
func (st *stack) startLoki(name, bin string) {
	st.t.Helper()
	s := st.f.Services[name]
	root, targets := st.root(name)
	args := make([]string, len(s.Command))
	for i, a := range s.Command {
		args[i] = st.rewrite(name, root, targets, a)
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + st.tmp}
	dataDir := filepath.Join(root, "var", "lib", "loki")
	if err := os.MkdirAll(dataDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		st.t.Fatal(err)
	}
	env = append(env, "LOKI_DATA_DIR="+dataDir)
	if lv := os.Getenv("COMPOSE_TEST_LOG_LEVEL"); lv != "" {
		env = append(env, "LOKI_LOG_LEVEL="+lv) // debug a failure
	}
	keys := make([]string, 0, len(s.Environment))
	for k := range s.Environment {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := s.Environment[k]
		if k == "LOKI_LOG_FORMAT" {
			v = "text" // for a reader of a failed test
		}
		env = append(env, k+"="+st.rewrite(name, root, targets, v))
	}
	p := &proc{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		st.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	st.procs = append(st.procs, p)
	st.t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if st.t.Failed() {
			st.t.Logf("--- %s (%s)\n%s", name, strings.Join(s.Command, " "), p.out.String())
		}
	})
}

// waitHealthy waits for the service's healthcheck URL to answer 200, as
// compose's healthcheck would, failing at once if its process has exited.
func (st *stack) waitHealthy(name, u string) {
	st.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = errors.New(resp.Status)
		}
		for _, p := range st.procs {
			if p.name != name {
				continue
			}
			select {
			case <-p.done:
				st.t.Fatalf("service %s exited: %s\n%s", name, p.cmd.ProcessState, p.out.String())
			default:
			}
		}
		if time.Now().After(deadline) {
			st.t.Fatalf("service %s: %s: %v", name, u, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (st *stack) connect(urls, creds string) *nats.Conn {
	st.t.Helper()
	opts, err := auth.ConnectOptions(creds)
	if err != nil {
		st.t.Fatal(err)
	}
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		st.t.Fatalf("connect with %s: %v", filepath.Base(creds), err)
	}
	st.t.Cleanup(nc.Close)
	return nc
}

// eventually retries f until it succeeds or ctx ends.
func (st *stack) eventually(ctx context.Context, what string, f func() error) {
	st.t.Helper()
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			st.t.Fatalf("%s: %v", what, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freePort returns a port free on 127.0.0.1 a moment ago, never one it
// returned before in this process: a closed listener's port may be handed
// out again at once, and two of the stack's listeners on one port leave a
// node that never becomes ready.
func freePort(t *testing.T) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if _, dup := handedOut.LoadOrStore(p, true); !dup {
			return p
		}
	}
}

var handedOut sync.Map // port → true

// syncBuffer is a bytes.Buffer safe for a process's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
