package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// reloadDebounce is how long the tool config must stay quiet before it is
// reloaded: an editor's save is several events (write, or write to a
// temporary file, rename, chmod), and the reload must see the finished file.
const reloadDebounce = 200 * time.Millisecond

// Log keys of reload lines.
const (
	logKeyFile    = "file"
	logKeyCause   = "cause"
	logKeyAdded   = "added"
	logKeyChanged = "changed"
	logKeyRemoved = "removed"
	logKeyErr     = "err"
)

// reloadSignalKey carries, in run's context, the channel on which main
// delivers SIGHUP: signals are caught only in main.
type reloadSignalKey struct{}

// withReloadSignal returns ctx carrying sig, the channel that asks a
// running `loki up` or `loki serve loki` to reload its tool config.
func withReloadSignal(ctx context.Context, sig <-chan os.Signal) context.Context {
	return context.WithValue(ctx, reloadSignalKey{}, sig)
}

// reloadSignal is the channel of withReloadSignal, or nil (which never
// receives) when there is none.
func reloadSignal(ctx context.Context) <-chan os.Signal {
	sig, _ := ctx.Value(reloadSignalKey{}).(<-chan os.Signal)
	return sig
}

// toolsReloader keeps the tools of one --config file in the registry while
// the process runs: when the file (or a script_file next to it) changes, or
// on SIGHUP, it loads the file again and, only if every tool in it is
// valid, puts the added and changed tools and deletes the tools the file no
// longer defines. Tools registered by others (through the API, or another
// file) are never deleted. Every replica and gateway follows the registry,
// so a reload takes effect everywhere. Each reload is logged and published
// as a ConfigReload on subjects.ConfigReloadOK or ConfigReloadFailed.
type toolsReloader struct {
	path    string
	reg     *loki.Registry
	nc      *nats.Conn
	log     *slog.Logger
	watcher *fsnotify.Watcher

	// Only Run's goroutine touches these once Run has started.
	owned   map[string]*lokiv1.Tool // the last good load: name to definition
	watched map[string]bool         // base names in the file's directory that trigger a reload
}

// newToolsReloader starts watching path, whose tools (already registered)
// are tools. nc publishes the reload events. The watch stops when Run
// returns.
func newToolsReloader(ctx context.Context, path string, tools []*loki.Compiled, nc *nats.Conn, log *slog.Logger) (*toolsReloader, error) {
	reg, err := loki.OpenRegistry(ctx, nc, log)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	// Watch the directory, not the file: editors and config managers
	// replace the file (write a new one, rename it over), which ends a
	// watch on the file itself.
	if err := w.Add(filepath.Dir(path)); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	r := &toolsReloader{path: path, reg: reg, nc: nc, log: log.With("component", "reload"), watcher: w}
	r.keep(tools)
	return r, nil
}

// keep records tools as the file's last good load.
func (r *toolsReloader) keep(tools []*loki.Compiled) {
	r.owned = make(map[string]*lokiv1.Tool, len(tools))
	r.watched = map[string]bool{filepath.Base(r.path): true}
	for _, t := range tools {
		r.owned[t.Def.GetName()] = t.Def
		// A script_file in the same directory triggers a reload too (an
		// inline script's source name is the tool name: at worst a file of
		// that name triggers a reload that changes nothing).
		if src := t.Def.GetSourceName(); src != "" && filepath.Dir(src) == "." {
			r.watched[src] = true
		}
	}
}

// Run reloads on file changes and SIGHUP until ctx is done, then stops
// watching. It returns an error only if the watch itself breaks.
func (r *toolsReloader) Run(ctx context.Context) error {
	defer r.watcher.Close()
	hup := reloadSignal(ctx)
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-r.watcher.Events:
			if !ok {
				return errors.New("file watch closed")
			}
			if ev.Has(fsnotify.Write|fsnotify.Create|fsnotify.Rename|fsnotify.Remove) && r.watched[filepath.Base(ev.Name)] {
				fire = time.After(reloadDebounce)
			}
		case err, ok := <-r.watcher.Errors:
			if !ok {
				return errors.New("file watch closed")
			}
			// An overflow lost events: reload to be sure.
			r.log.Warn("watching the tool config", logKeyFile, r.path, logKeyErr, err)
			fire = time.After(reloadDebounce)
		case <-fire:
			fire = nil
			r.reload(ctx, "file changed")
		case <-hup:
			r.reload(ctx, "SIGHUP")
		}
	}
}

// reload applies the file if all of it is valid, and otherwise changes nothing.
func (r *toolsReloader) reload(ctx context.Context, cause string) {
	tools, _, err := loadToolsFlag(r.path)
	if err != nil {
		r.refuse(cause, err)
		return
	}
	var added, changed, removed []string
	next := make(map[string]*lokiv1.Tool, len(tools))
	for _, t := range tools {
		name := t.Def.GetName()
		next[name] = t.Def
		if prev, ok := r.owned[name]; !ok {
			added = append(added, name)
		} else if !proto.Equal(prev, t.Def) {
			changed = append(changed, name)
		}
	}
	for name := range r.owned {
		if _, ok := next[name]; !ok {
			removed = append(removed, name)
		}
	}
	slices.Sort(added)
	slices.Sort(changed)
	slices.Sort(removed)
	// Every tool is valid, so only the bus can fail from here on. Put first:
	// a tool moved between names is never missing from both.
	if err := r.reg.Put(ctx, tools...); err != nil {
		// Some may be stored: own both sets so a later reload removes what
		// the file no longer defines.
		for name, def := range next {
			r.owned[name] = def
		}
		r.refuse(cause, err)
		return
	}
	for _, name := range removed {
		// Deleted by someone else already is as good as deleted.
		if err := r.reg.Delete(ctx, name); err != nil && fault.CodeOf(err) != fault.NotFound {
			for name, def := range next {
				r.owned[name] = def
			}
			r.refuse(cause, err)
			return
		}
	}
	r.keep(tools)
	r.log.Info("tool config reloaded", logKeyFile, r.path, logKeyCause, cause,
		logKeyAdded, added, logKeyChanged, changed, logKeyRemoved, removed)
	r.publish(subjects.ConfigReloadOK, &lokiv1.ConfigReload{File: r.path, Ok: true,
		Added: added, Changed: changed, Removed: removed, Time: timestamppb.Now()})
}

func (r *toolsReloader) refuse(cause string, err error) {
	r.log.Error("tool config reload refused; the tools of the last good load stay", logKeyFile, r.path,
		logKeyCause, cause, logKeyErr, err)
	r.publish(subjects.ConfigReloadFailed, &lokiv1.ConfigReload{File: r.path, Error: err.Error(), Time: timestamppb.Now()})
}

func (r *toolsReloader) publish(subject string, ev *lokiv1.ConfigReload) {
	b, err := protojson.Marshal(ev)
	if err == nil {
		err = r.nc.Publish(subject, b)
	}
	if err != nil {
		r.log.Warn("publish the reload event", "subject", subject, logKeyErr, err)
	}
}

// reloadComponent runs what SIGHUP reloads, either of which may be nil:
// first the live settings of the service config (svc), then the tool
// config (tools), which also reloads when its file changes.
func reloadComponent(svc *serviceReloader, tools *toolsReloader) component {
	ready := make(chan struct{})
	close(ready)
	run := func(ctx context.Context) error {
		hup := reloadSignal(ctx)
		fwd := make(chan os.Signal, 1)
		toolsDone := make(chan error, 1)
		if tools != nil {
			go func() { toolsDone <- tools.Run(withReloadSignal(ctx, fwd)) }()
		}
		for {
			select {
			case <-ctx.Done():
				if tools != nil {
					return <-toolsDone
				}
				return nil
			case err := <-toolsDone:
				return err
			case sig := <-hup:
				if svc != nil {
					svc.reload("SIGHUP")
				}
				if tools != nil {
					select {
					case fwd <- sig:
					default: // a reload is pending already
					}
				}
			}
		}
	}
	return component{name: "reload", run: run, ready: ready}
}

// liveSetting is a group of service-config settings that a running
// component applies without a restart.
type liveSetting struct {
	// keys are the settings, as changedKeys names them: "[gateway] tokens".
	keys []string
	// apply puts the settings of cfg, a valid config, into effect.
	apply func(cfg serviceConfig) error
}

// serviceReloader reloads the --service-config file on SIGHUP. If the file
// is invalid, it logs why and changes nothing; else it applies the settings
// that can change live ([log] level and those of the running components'
// live settings) and names those that changed since start but need a
// restart. Only the goroutine calling reload touches it.
type serviceReloader struct {
	path, dataDir string
	log           *slog.Logger
	live          []liveSetting
	start         serviceConfig // as loaded at start: what needs a restart differs from it
	last          serviceConfig // the last load applied
}

// newServiceReloader returns the reloader of the service config at path
// (nil when path is ""), as start loaded it (before flags or wiring changed
// it). Its [log] level sets level (--log-level, when the file sets none,
// is flagLevel); its other live settings are those of comps.
func newServiceReloader(path, dataDir string, start serviceConfig, log *slog.Logger, level *slog.LevelVar,
	flagLevel slog.Level, comps ...component) *serviceReloader {
	if path == "" {
		return nil
	}
	r := &serviceReloader{path: path, dataDir: dataDir, log: log.With("component", "reload"), start: start, last: start}
	r.live = append(r.live, liveSetting{keys: []string{logLevelKey}, apply: func(c serviceConfig) error {
		lv, _, err := c.Log.level(flagLevel)
		if err == nil {
			level.Set(lv)
		}
		return err
	}})
	for _, c := range comps {
		r.live = append(r.live, c.live...)
	}
	return r
}

// logLevelKey is the [log] level setting, as changedKeys names it.
const logLevelKey = "[log] level"

// reload loads the file again and applies what it can; cause names what
// asked for it, in the log.
func (r *serviceReloader) reload(cause string) {
	cur, err := loadServiceConfig(r.path, r.dataDir)
	if err != nil {
		r.log.Error("service config reload refused; the settings in use stay", logKeyFile, r.path,
			logKeyCause, cause, logKeyErr, err)
		return
	}
	changed := changedKeys(r.last, cur)
	liveKeys := map[string]bool{}
	var applied []string
	ok := true
	for _, ls := range r.live {
		var keys []string
		for _, k := range ls.keys {
			liveKeys[k] = true
			if slices.Contains(changed, k) {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			continue
		}
		if err := ls.apply(cur); err != nil {
			ok = false
			r.log.Error("service config reload: a setting could not be applied; it stays as it was", logKeyFile, r.path,
				"settings", keys, logKeyErr, err)
			continue
		}
		applied = append(applied, keys...)
	}
	if ok {
		r.last = cur
	}
	var restart []string
	for _, k := range changedKeys(r.start, cur) {
		if !liveKeys[k] {
			restart = append(restart, k)
		}
	}
	if len(applied) == 0 {
		applied = append(applied, "none")
	}
	r.log.Info("service config reloaded", logKeyFile, r.path, logKeyCause, cause, "applied", strings.Join(applied, ", "))
	if len(restart) > 0 {
		r.log.Warn("service config: these settings changed since start and need a restart", logKeyFile, r.path,
			"restart_needed", strings.Join(restart, ", "))
	}
}

// changedKeys names the settings that differ between a and b, in file
// order: "[table] key" (a nested table is one key: "[jormungandr] policy").
func changedKeys(a, b serviceConfig) []string {
	var changed []string
	av, bv := reflect.ValueOf(a), reflect.ValueOf(b)
	for i := range av.NumField() {
		table := av.Type().Field(i).Tag.Get("toml")
		at, bt := av.Field(i), bv.Field(i)
		for j := range at.NumField() {
			f := at.Type().Field(j)
			key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if !f.IsExported() || key == "-" {
				continue // computed, or wiring rather than file content
			}
			if key == "" {
				key = strings.ToLower(f.Name)
			}
			if !reflect.DeepEqual(at.Field(j).Interface(), bt.Field(j).Interface()) {
				changed = append(changed, "["+table+"] "+key)
			}
		}
	}
	return changed
}
