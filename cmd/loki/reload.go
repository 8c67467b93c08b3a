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
	// restartNeeded names the service settings that changed on disk since
	// start; they are not reloaded live.
	restartNeeded func() ([]string, error)

	// Only Run's goroutine touches these once Run has started.
	owned   map[string]*lokiv1.Tool // the last good load: name to definition
	watched map[string]bool         // base names in the file's directory that trigger a reload
}

// newToolsReloader starts watching path, whose tools (already registered)
// are tools. nc publishes the reload events; restartNeeded may be nil. The
// watch stops when Run returns.
func newToolsReloader(ctx context.Context, path string, tools []*loki.Compiled, nc *nats.Conn, log *slog.Logger,
	restartNeeded func() ([]string, error)) (*toolsReloader, error) {
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
	r := &toolsReloader{path: path, reg: reg, nc: nc, log: log.With("component", "reload"), watcher: w,
		restartNeeded: restartNeeded}
	r.keep(tools)
	return r, nil
}

// component runs the reloader alongside the services.
func (r *toolsReloader) component() component {
	ready := make(chan struct{})
	close(ready)
	return component{name: "reload", run: r.Run, ready: ready}
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
			r.noteRestart()
			r.reload(ctx, "SIGHUP")
		}
	}
}

// noteRestart logs, on SIGHUP, which service settings changed on disk:
// only the tool config is reloaded live.
func (r *toolsReloader) noteRestart() {
	if r.restartNeeded == nil {
		return
	}
	changed, err := r.restartNeeded()
	switch {
	case err != nil:
		r.log.Warn("SIGHUP reloads the tool config only; the service config does not load, and is not reloaded", logKeyErr, err)
	case len(changed) > 0:
		r.log.Warn("SIGHUP reloads the tool config only; these service-config settings changed and need a restart",
			"restart_needed", changed)
	default:
		r.log.Info("SIGHUP: reloading the tool config (service-config settings, --board and flags need a restart; none changed)")
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

// serviceConfigCheck loads the service config at path now and returns a
// function that loads it again and names the tables ("[loki]", ...) that
// differ: a service config is not reloaded live, so those need a restart.
func serviceConfigCheck(path, dataDir string) func() ([]string, error) {
	if path == "" {
		return nil
	}
	base, baseErr := loadServiceConfig(path, dataDir)
	return func() ([]string, error) {
		if baseErr != nil {
			return nil, baseErr
		}
		cur, err := loadServiceConfig(path, dataDir)
		if err != nil {
			return nil, err
		}
		var changed []string
		bv, cv := reflect.ValueOf(base), reflect.ValueOf(cur)
		for i := range bv.NumField() {
			if !reflect.DeepEqual(bv.Field(i).Interface(), cv.Field(i).Interface()) {
				changed = append(changed, "["+bv.Type().Field(i).Tag.Get("toml")+"]")
			}
		}
		return changed, nil
	}
}
