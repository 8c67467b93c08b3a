package loki

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/replicas"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Registry is the tool registry on a JetStream KV bucket (one key per tool,
// the value a protojson Tool). Every Loki replica watches the bucket and keeps
// the compiled tools in memory, so a tool put through any replica is callable
// on all of them. Methods are safe for concurrent use.
type Registry struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	mu    sync.RWMutex
	tools map[string]*Compiled

	changed chan struct{} // one pending signal; see Changed
	// revision is the highest KV revision applied.
	revision atomic.Uint64
}

// RegistryConfig is how the registry bucket is created.
type RegistryConfig struct {
	// Replicas of the bucket when it is created (0 or 1: one; 3 on a
	// cluster). An existing bucket keeps its own, and a difference is
	// logged at WARN.
	Replicas int
	// HubDomain, when set, is the JetStream domain of a hub this site
	// follows as a leaf node: the site's bucket sources the hub's bucket
	// of the same name, so tools registered at the hub appear here (once
	// the uplink is up; the server catches up after an outage) next to
	// tools registered locally. A tool registered at both is the one
	// written last to this site's bucket.
	HubDomain string
}

// OpenRegistry opens the registry bucket, creating it with one replica on
// first use; an existing bucket's settings are left as they are.
func OpenRegistry(ctx context.Context, nc *nats.Conn, log *slog.Logger) (*Registry, error) {
	return OpenRegistryConfig(ctx, nc, log, RegistryConfig{})
}

// OpenRegistryConfig opens the registry bucket, creating it as cfg says on
// first use. An existing bucket keeps its settings, except that a missing
// hub source is added when cfg names a hub (which needs the right to
// update the stream; without it, a WARN says what is missing).
func OpenRegistryConfig(ctx context.Context, nc *nats.Conn, log *slog.Logger, cfg RegistryConfig) (*Registry, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	kvc := jetstream.KeyValueConfig{
		Bucket:      subjects.ToolsBucket,
		Description: "Loki tool registry: one protojson Tool per key",
		History:     8,
		Storage:     jetstream.FileStorage,
		Replicas:    max(cfg.Replicas, 1),
	}
	if cfg.HubDomain != "" {
		kvc.Sources = []*jetstream.StreamSource{{Name: subjects.ToolsBucket, Domain: cfg.HubDomain}}
	}
	// Open what exists: an operator may have changed the bucket (replicas in a
	// cluster, say), and readers such as gateways need no right to change it.
	var kv jetstream.KeyValue
	created := false
	err = replicas.Setup(ctx, log, subjects.ToolsBucket, func(ctx context.Context) (err error) {
		kv, err = js.KeyValue(ctx, subjects.ToolsBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = js.CreateKeyValue(ctx, kvc)
			created = err == nil
			if errors.Is(err, jetstream.ErrBucketExists) { // another replica won the race
				kv, err = js.KeyValue(ctx, subjects.ToolsBucket)
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("registry: open bucket %s (is JetStream enabled on the server?): %w", subjects.ToolsBucket, err)
	}
	if !created {
		replicas.Keep(log, subjects.ToolsBucket, replicas.OfKV(ctx, kv), kvc.Replicas)
		if cfg.HubDomain != "" {
			addHubSource(ctx, js, kv, cfg.HubDomain, log)
		}
	}
	return &Registry{kv: kv, log: log, tools: map[string]*Compiled{}, changed: make(chan struct{}, 1)}, nil
}

// WaitRegistry opens the registry bucket for reading only, for components
// that may not create it (a gateway): while it does not exist yet — no Loki
// replica has started — it waits, saying so once, until ctx ends.
func WaitRegistry(ctx context.Context, nc *nats.Conn, log *slog.Logger) (*Registry, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	said := false
	for {
		kv, err := js.KeyValue(ctx, subjects.ToolsBucket)
		if err == nil {
			return &Registry{kv: kv, log: log, tools: map[string]*Compiled{}, changed: make(chan struct{}, 1)}, nil
		}
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("registry: open bucket %s (is JetStream enabled on the server?): %w", subjects.ToolsBucket, err)
		}
		if !said {
			log.Warn("waiting for the tool registry: no Loki replica has created it yet", "bucket", subjects.ToolsBucket)
			said = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// addHubSource makes an existing registry bucket (a site that ran on its
// own before it joined a hub) source the hub's bucket.
func addHubSource(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, domain string, log *slog.Logger) {
	st, err := kv.Status(ctx)
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if err != nil || !ok || bs.StreamInfo() == nil {
		return
	}
	sc := bs.StreamInfo().Config
	prefix := "$JS." + domain + ".API"
	for _, src := range sc.Sources {
		if src.External != nil && src.External.APIPrefix == prefix {
			return
		}
	}
	sc.Sources = append(sc.Sources, &jetstream.StreamSource{Name: sc.Name, External: &jetstream.ExternalStream{APIPrefix: prefix}})
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		log.Warn("tool registry does not follow the hub's, so tools registered at the hub do not appear here; add the source as an admin",
			"bucket", subjects.ToolsBucket, "hub_domain", domain, "err", err)
		return
	}
	log.Info("tool registry now follows the hub's", "bucket", subjects.ToolsBucket, "hub_domain", domain)
}

// Changed receives a value after the watch has applied changes to the
// tools (several changes may share one value). It has room for one
// consumer: whoever follows the registry, such as the gateway rebuilding
// its per-tool RPCs.
func (r *Registry) Changed() <-chan struct{} { return r.changed }

func (r *Registry) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Put stores every tool. Tools must come from Compile or LoadTools, so they
// are valid; a failure part-way is reported with the tools already stored.
func (r *Registry) Put(ctx context.Context, tools ...*Compiled) error {
	for i, c := range tools {
		def := proto.Clone(c.Def).(*lokiv1.Tool)
		def.Revision = 0
		b, err := protojson.Marshal(def)
		if err != nil {
			return fmt.Errorf("registry: encode tool %q: %w", def.GetName(), err)
		}
		// Re-registering an unchanged tool (every `loki up` does) keeps its revision.
		if cur, err := r.kv.Get(ctx, def.GetName()); err == nil && bytes.Equal(cur.Value(), b) {
			continue
		}
		if _, err := r.kv.Put(ctx, def.GetName(), b); err != nil {
			return fmt.Errorf("registry: put tool %q (%d of %d stored): %w", def.GetName(), i, len(tools), err)
		}
	}
	return nil
}

// Register stores one tool and returns its definition with the registry
// revision set; an unchanged tool keeps its revision.
//
// A tool kept by an owner (Tool.owner, say a device) may be replaced only
// by a registration with the same owner, and an owned tool never replaces
// one with another owner or none: ALREADY_EXISTS names who keeps it. The
// check and the write are one compare-and-set, so a registration racing
// another cannot slip in between.
func (r *Registry) Register(ctx context.Context, c *Compiled) (*lokiv1.Tool, error) {
	def := proto.Clone(c.Def).(*lokiv1.Tool)
	def.Revision = 0
	name := def.GetName()
	b, err := protojson.Marshal(def)
	if err != nil {
		return nil, fmt.Errorf("registry: encode tool %q: %w", name, err)
	}
	cur, err := r.kv.Get(ctx, name)
	var rev uint64
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		rev, err = r.kv.Create(ctx, name, b)
	case err != nil:
		return nil, fmt.Errorf("registry: get %q: %w", name, err)
	case bytes.Equal(cur.Value(), b):
		rev = cur.Revision() // unchanged: keeps its revision
	default:
		old := &lokiv1.Tool{}
		if uerr := protojson.Unmarshal(cur.Value(), old); uerr == nil && old.GetOwner() != def.GetOwner() {
			return nil, fault.New(fault.AlreadyExists, "tool %q exists and is kept by %s; a registration by %s may not replace it",
				name, ownerName(old.GetOwner()), ownerName(def.GetOwner()))
		}
		rev, err = r.kv.Update(ctx, name, b, cur.Revision())
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return nil, fault.Wrap(fault.Unavailable, err, "tool %q changed while it was being registered; register it again", name)
	}
	if err != nil {
		return nil, fmt.Errorf("registry: put tool %q: %w", name, err)
	}
	def.Revision = rev
	return def, nil
}

func ownerName(owner string) string {
	if owner == "" {
		return "its registrant (no owner)"
	}
	return owner
}

// registerVisibleWait bounds how long a registration waits for its own
// replica's watch to apply it (sub-millisecond on loopback).
const registerVisibleWait = 2 * time.Second

// WaitRevision waits until Watch has applied revision rev, ctx ends or max
// passes, whichever is first; it reports whether rev was applied.
func (r *Registry) WaitRevision(ctx context.Context, rev uint64, max time.Duration) bool {
	deadline := time.Now().Add(max)
	for r.revision.Load() < rev {
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
	return true
}

// Delete removes a tool; NOT_FOUND if there is none by that name.
func (r *Registry) Delete(ctx context.Context, name string) error {
	if _, err := r.kv.Get(ctx, name); errors.Is(err, jetstream.ErrKeyNotFound) {
		return fault.New(fault.NotFound, "no tool named %q", name)
	} else if err != nil {
		return fmt.Errorf("registry: get %q: %w", name, err)
	}
	if err := r.kv.Delete(ctx, name); err != nil {
		return fmt.Errorf("registry: delete %q: %w", name, err)
	}
	return nil
}

// Get returns the compiled tool, as last seen by Watch.
func (r *Registry) Get(name string) (*Compiled, bool) {
	r.mu.RLock()
	c, ok := r.tools[name]
	r.mu.RUnlock()
	return c, ok
}

// List returns every known tool, sorted by name.
func (r *Registry) List() []*Compiled {
	r.mu.RLock()
	out := make([]*Compiled, 0, len(r.tools))
	for _, c := range r.tools {
		out = append(out, c)
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Def.GetName() < out[j].Def.GetName() })
	return out
}

// Watch follows the bucket until ctx is done, compiling each new revision
// once. ready is called after the initial values are loaded.
func (r *Registry) Watch(ctx context.Context, ready func()) error {
	w, err := r.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("registry: watch: %w", err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil { // end of initial values
				if ready != nil {
					ready()
					ready = nil
				}
				continue
			}
			// The initial snapshot is summed up by the service's one
			// "serving" line; later changes are news worth a line each.
			r.apply(e, ready == nil)
			r.signal()
		}
	}
}

// Len is the number of callable tools, as last seen by Watch.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.tools)
}

// Revision is the highest registry (KV) revision Watch has applied: it
// grows with every put and delete, so replicas showing the same revision
// hold the same tools.
func (r *Registry) Revision() uint64 { return r.revision.Load() }

// apply installs or removes the tool of e; live says whether it is a
// change after the initial snapshot (logged at INFO) or part of it (DEBUG).
func (r *Registry) apply(e jetstream.KeyValueEntry, live bool) {
	level := slog.LevelDebug
	if live {
		level = slog.LevelInfo
	}
	name := e.Key()
	// The revision moves only once the entry is applied: a registration
	// waits for it, and its caller must then find the tool.
	defer func() {
		for {
			cur := r.revision.Load()
			if e.Revision() <= cur || r.revision.CompareAndSwap(cur, e.Revision()) {
				return
			}
		}
	}()
	if e.Operation() != jetstream.KeyValuePut {
		r.mu.Lock()
		delete(r.tools, name)
		r.mu.Unlock()
		r.log.Log(context.Background(), level, "tool removed", "tool", name, "revision", e.Revision())
		return
	}
	if cur, ok := r.Get(name); ok && cur.Def.GetRevision() == e.Revision() {
		return
	}
	def := &lokiv1.Tool{}
	if err := protojson.Unmarshal(e.Value(), def); err != nil {
		r.log.Error("registry entry is not a tool; ignoring it", "key", name, "revision", e.Revision(), "err", err)
		r.remove(name)
		return
	}
	def.Revision = e.Revision()
	c, err := Compile(def)
	if err != nil {
		// Written by a newer or older Loki, or by hand: keep serving the rest.
		r.log.Error("registry tool does not compile; it is not callable", "tool", name, "revision", e.Revision(), "err", err)
		r.remove(name)
		return
	}
	r.mu.Lock()
	r.tools[name] = c
	r.mu.Unlock()
	r.log.Log(context.Background(), level, "tool loaded", "tool", name, "revision", e.Revision())
}

func (r *Registry) remove(name string) {
	r.mu.Lock()
	delete(r.tools, name)
	r.mu.Unlock()
}
