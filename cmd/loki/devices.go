package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// devicesCommands are the subcommands of `loki devices`; without one it lists.
var devicesCommands = []string{"list", "show", "cmd", "watch", "stream", "rm"}

const devicesSynopsis = `Usage: loki devices [list] [--json] [flags]
       loki devices show ID [--json]
       loki devices cmd ID NAME [key=value ...] [--entity E] [--priority N] [--timeout D]
       loki devices watch [ID] [--kind K] [--json]
       loki devices stream ID SOURCE [--bytes N] [-o FILE]
       loki devices rm ID

Lists the Jotunheim devices the platform knows (docs/DEVICES.md): id, name,
model, firmware, online or offline, when it was last heard from, and the
tools made of its sensors and actuators. A device joins with
'loki auth add-device ID' and then 'jotunheim --id ID' on the device (or
'jotunheim --sim --id ID' on any machine). 'loki devices COMMAND --help'
shows a subcommand's flags.`

func cmdDevices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "list":
			args = args[1:]
		case "show":
			return devicesShow(ctx, args[1:], stdout, stderr)
		case "cmd":
			return devicesCmd(ctx, args[1:], stdout, stderr)
		case "watch":
			return devicesWatch(ctx, args[1:], stdout, stderr)
		case "stream":
			return devicesStream(ctx, args[1:], stdout, stderr)
		case "rm":
			return devicesRemove(ctx, args[1:], stdout, stderr)
		}
	}
	fs := newFlags("devices", devicesSynopsis, stderr)
	nf := addNATSFlags(fs, subjects.RoleClient)
	asJSON := fs.Bool("json", false, "print the devices' full records as JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageMistake("devices", fmt.Errorf("devices: unknown command %q (commands: %s)", pos[0], strings.Join(devicesCommands, ", ")))
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("devices", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, toolsTimeout)
	defer cancel()
	list, err := jotunheim.NewClient(nc).List(ctx)
	if err != nil {
		return toolsFailed("devices", err)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].GetId() < list[j].GetId() })
	if *asJSON {
		b, _ := protojson.MarshalOptions{Multiline: true}.Marshal(&jv1.DeviceList{Devices: list})
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	if len(list) == 0 {
		fmt.Fprintln(stderr, "no devices yet: add one with 'loki auth add-device ID', then run 'jotunheim --id ID' on it (or 'jotunheim --sim --id ID' here)")
		return nil
	}
	now := time.Now()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tMODEL\tFIRMWARE\tSTATUS\tLAST SEEN\tTOOLS")
	for _, d := range list {
		m := d.GetManifest()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.GetId(), orDash(m.GetName()), orDash(m.GetModel()),
			orDash(m.GetFirmwareVersion()), deviceStatus(d), ago(now, d.GetLastSeen()), orDash(strings.Join(d.GetTools(), ",")))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// deviceStatus is online, offline or refused; 'loki devices show' says why.
func deviceStatus(d *jv1.Device) string {
	switch {
	case d.GetOnline():
		return "online"
	case d.GetRefused() != "":
		return "refused"
	}
	return "offline"
}

// unixTime converts the registry's Unix seconds.
func unixTime(sec float64) time.Time {
	whole, frac := math.Modf(sec)
	return time.Unix(int64(whole), int64(frac*1e9))
}

// ago says how long before now the Unix time sec was, at a precision a
// person reads at a glance; "-" for never.
func ago(now time.Time, sec float64) string {
	if sec <= 0 {
		return "-"
	}
	d := now.Sub(unixTime(sec))
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// stamp is a Unix time as RFC 3339 with how long ago it was.
func stamp(now time.Time, sec float64) string {
	if sec <= 0 {
		return "-"
	}
	return unixTime(sec).Local().Format(time.RFC3339) + " (" + ago(now, sec) + ")"
}

// deviceID checks a device id argument before anything is sent.
func deviceID(cmd, id string) error {
	if err := subjects.ValidDeviceID(id); err != nil {
		return usageMistake(cmd, fmt.Errorf("%s: %w", cmd, err))
	}
	return nil
}

func devicesShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("devices show", `Usage: loki devices show ID [--json] [flags]

Prints one device: what its manifest says it is and has (sensors, actuators,
pins, interfaces, features, limits), whether it is online, when it was last
heard from, and its tools.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleClient)
	asJSON := fs.Bool("json", false, "print the device's record as JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageMistake("devices show", fmt.Errorf("devices show: want one device ID, got %d arguments", len(pos)))
	}
	if err := deviceID("devices show", pos[0]); err != nil {
		return err
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("devices show", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, toolsTimeout)
	defer cancel()
	d, err := jotunheim.NewClient(nc).Get(ctx, pos[0])
	if err != nil {
		return toolsFailed("devices show", err)
	}
	if *asJSON {
		b, _ := protojson.MarshalOptions{Multiline: true}.Marshal(d)
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	writeDevice(stdout, d, time.Now())
	return nil
}

// writeDevice prints d for a person.
func writeDevice(w io.Writer, d *jv1.Device, now time.Time) {
	m := d.GetManifest()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	line("id", d.GetId())
	line("name", m.GetName())
	line("model", m.GetModel())
	line("manufacturer", m.GetManufacturer())
	line("firmware", m.GetFirmwareVersion())
	if p := m.GetProtocol(); p != nil {
		line("protocol", fmt.Sprintf("%d.%d", p.GetMajor(), p.GetMinor()))
	}
	line("status", deviceStatus(d)+", since "+stamp(now, d.GetSince()))
	if !d.GetOnline() {
		line("why", d.GetOfflineReason())
	}
	line("refused", d.GetRefused())
	line("last seen", stamp(now, d.GetLastSeen()))
	if s := m.GetHeartbeatSeconds(); s > 0 {
		line("heartbeat", fmt.Sprintf("every %ds", s))
	}
	if s := m.GetTelemetrySeconds(); s > 0 {
		line("telemetry", fmt.Sprintf("every %ds", s))
	}
	line("features", strings.Join(m.GetFeatures(), ", "))
	line("interfaces", strings.Join(m.GetInterfaces(), ", "))
	if l := m.GetLimits(); l != nil {
		var parts []string
		if n := l.GetMaxMessageBytes(); n > 0 {
			parts = append(parts, fmt.Sprintf("messages ≤ %d bytes", n))
		}
		if n := l.GetMaxQueuedCommands(); n > 0 {
			parts = append(parts, fmt.Sprintf("%d queued commands", n))
		}
		if n := l.GetMemoryBytes(); n > 0 {
			parts = append(parts, fmt.Sprintf("%d MiB memory", n>>20))
		}
		line("limits", strings.Join(parts, ", "))
	}
	line("tools", strings.Join(d.GetTools(), ", "))
	var streams []string
	for _, src := range m.GetStreams() {
		streams = append(streams, fmt.Sprintf("%s (%s, %s)", src.GetName(), src.GetKind(), src.GetContentType()))
	}
	line("streams", strings.Join(streams, ", ")) // loki devices stream ID NAME
	_ = tw.Flush()

	tool := func(entity string) string {
		name, err := subjects.DeviceToolName(d.GetId(), entity)
		for _, t := range d.GetTools() {
			if err == nil && t == name {
				return t
			}
		}
		return "-"
	}
	if len(m.GetSensors()) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SENSOR\tKIND\tUNIT\tTYPE\tRANGE\tTOOL")
		for _, s := range m.GetSensors() {
			rng := "-"
			if s.Min != nil || s.Max != nil {
				rng = bound(s.Min) + ".." + bound(s.Max)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.GetName(), orDash(s.GetKind()), orDash(s.GetUnit()), orDash(s.GetValueType()), rng, tool(s.GetName()))
		}
		_ = tw.Flush()
	}
	if len(m.GetActuators()) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ACTUATOR\tKIND\tACCEPTS\tTOOL")
		for _, a := range m.GetActuators() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.GetName(), orDash(a.GetKind()), orDash(strings.Join(a.GetAccepts(), "; ")), tool(a.GetName()))
		}
		_ = tw.Flush()
	}
	if len(m.GetPins()) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PIN\tNUMBER\tMODE")
		for _, p := range m.GetPins() {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", p.GetName(), p.GetNumber(), orDash(p.GetMode()))
		}
		_ = tw.Flush()
	}
}

func bound(v *float64) string {
	if v == nil {
		return ""
	}
	return strconv.FormatFloat(*v, 'g', -1, 64)
}

func devicesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("devices cmd", `Usage: loki devices cmd ID NAME [key=value ...] [flags]

Sends command NAME to device ID and prints the JSON data of its result.
Built-in commands: ping, caps, reboot, config.get, config.set (key=value
settings); entity commands: read (a sensor), set (an actuator, value=...),
state, with --entity. Values are JSON where they parse as JSON (n=3,
on=true, tags='["a","b"]'), else strings. Examples:
  loki devices cmd demo ping
  loki devices cmd demo read --entity temperature
  loki devices cmd demo set --entity led value=true
On failure, prints the error code and message and exits 1: NOT_FOUND (no
such device, command or entity), UNAVAILABLE (the device is offline),
DEADLINE_EXCEEDED (it did not answer within --timeout), or the device's own.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleClient)
	entity := fs.String("entity", "", "the sensor or actuator of an entity command (read, set, state)")
	priority := fs.Int("priority", 0, "higher runs first when commands queue on the device")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long; the device may drop a command it cannot start in time")
	rawJSON := fs.String("json", "", "arguments as one JSON object, merged under key=value pairs")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		fs.Usage()
		return usageMistake("devices cmd", fmt.Errorf("devices cmd: want a device ID and a command NAME, got %d arguments", len(pos)))
	}
	id, name := pos[0], pos[1]
	if err := deviceID("devices cmd", id); err != nil {
		return err
	}
	if *timeout <= 0 || *timeout > time.Duration(math.MaxUint32)*time.Millisecond {
		return usageMistake("devices cmd", fmt.Errorf("devices cmd: --timeout %s: must be above 0 and at most %s", *timeout, time.Duration(math.MaxUint32)*time.Millisecond))
	}
	if *priority < math.MinInt32 || *priority > math.MaxInt32 {
		return usageMistake("devices cmd", fmt.Errorf("devices cmd: --priority %d: out of range", *priority))
	}
	cmdArgs, err := commandArgs(*rawJSON, pos[2:])
	if err != nil {
		return usageMistake("devices cmd", fmt.Errorf("devices cmd: %w", err))
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("devices cmd", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	data, err := jotunheim.NewClient(nc).Command(ctx, id, &jv1.Command{
		Name: name, Entity: *entity, Args: cmdArgs, Priority: int32(*priority), TimeoutMs: uint32(timeout.Milliseconds()),
	})
	if err != nil {
		return toolsFailed("devices cmd", err)
	}
	if len(data) == 0 {
		data = json.RawMessage("null")
	}
	// protojson spaces its output unpredictably; print it compact, so the
	// output of the same result is always the same.
	var compact bytes.Buffer
	if json.Compact(&compact, data) == nil {
		data = compact.Bytes()
	}
	fmt.Fprintln(stdout, string(data))
	return nil
}

// commandArgs merges --json and key=value pairs into a command's args:
// values as JSON where they parse, else strings.
func commandArgs(rawJSON string, pairs []string) (*structpb.Struct, error) {
	args := map[string]any{}
	if rawJSON != "" {
		if err := json.Unmarshal([]byte(rawJSON), &args); err != nil {
			return nil, fmt.Errorf("--json: want a JSON object: %v", err)
		}
	}
	seen := map[string]bool{}
	for _, kv := range pairs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("argument %q: want key=value", kv)
		}
		if seen[k] {
			return nil, fmt.Errorf("argument %s given twice", k)
		}
		seen[k] = true
		var val any
		if err := json.Unmarshal([]byte(v), &val); err != nil {
			val = v
		}
		args[k] = val
	}
	if len(args) == 0 {
		return nil, nil
	}
	s, err := structpb.NewStruct(args)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "arguments: %v", err)
	}
	return s, nil
}

func devicesWatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("devices watch", fmt.Sprintf(`Usage: loki devices watch [ID] [--kind K] [--json] [flags]

Prints device events as they happen, one line each, until interrupted:
presence (online, offline), manifests (accepted or refused), entity states
and the devices' own events. With ID, only that device's; with --kind, only
that kind (%s).`, strings.Join(subjects.DeviceEventKinds, ", ")), stderr)
	nf := addNATSFlags(fs, subjects.RoleClient)
	kind := fs.String("kind", "", "only events of this kind: "+strings.Join(subjects.DeviceEventKinds, ", "))
	asJSON := fs.Bool("json", false, "print each event as one line of JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageMistake("devices watch", fmt.Errorf("devices watch: unexpected argument %q", pos[1]))
	}
	id := ""
	if len(pos) == 1 {
		id = pos[0]
	}
	subj, err := subjects.DeviceEvents(id, *kind)
	if err != nil {
		return usageMistake("devices watch", fmt.Errorf("devices watch: %w", err))
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("devices watch", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := jotunheim.NewClient(nc).Watch(ctx, id, *kind)
	if err != nil {
		return toolsFailed("devices watch", err)
	}
	// Watch returns once the subscription is live on the server, so
	// nothing published after "listening" is missed.
	fmt.Fprintf(stderr, "listening on %s (Ctrl-C to stop)\n", subj)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil // the watch ends with ctx
			}
			if *asJSON {
				b, _ := protojson.Marshal(ev)
				var compact bytes.Buffer
				if json.Compact(&compact, b) == nil {
					b = compact.Bytes()
				}
				fmt.Fprintln(stdout, string(b))
				continue
			}
			fmt.Fprintln(stdout, eventLine(ev))
		}
	}
}

// eventLine is one device event for a person: time, device, kind, and
// what happened.
func eventLine(ev *jv1.DeviceEvent) string {
	at := time.Now()
	if ev.GetAt() > 0 {
		at = unixTime(ev.GetAt())
	}
	parts := []string{at.Local().Format("15:04:05.000"), ev.GetDevice(), ev.GetKind()}
	compact := func(v *structpb.Value) string {
		if v == nil {
			return "null"
		}
		b, _ := protojson.Marshal(v)
		return string(b)
	}
	switch {
	case ev.GetState() != nil:
		s := ev.GetState()
		parts = append(parts, s.GetEntity()+"="+compact(s.GetValue())+s.GetUnit())
	case ev.GetEvent() != nil:
		e := ev.GetEvent()
		p := e.GetKind()
		if e.GetEntity() != "" {
			p += " " + e.GetEntity()
		}
		if e.GetData() != nil {
			p += " " + compact(e.GetData())
		}
		parts = append(parts, p)
	case ev.GetManifest() != nil:
		m := ev.GetManifest()
		parts = append(parts, fmt.Sprintf("%s %s %s: %d sensors, %d actuators", orDash(m.GetName()), orDash(m.GetModel()),
			orDash(m.GetFirmwareVersion()), len(m.GetSensors()), len(m.GetActuators())))
	}
	if ev.GetReason() != "" {
		parts = append(parts, "("+ev.GetReason()+")")
	}
	return strings.Join(parts, "  ")
}

func devicesRemove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("devices rm", `Usage: loki devices rm ID [flags]

Forgets device ID: its registry record and its tools. Its login stays: a
device that connects again is registered again; to keep it out, also run
'loki auth revoke ID'. Connects as the local admin identity; only admins
may remove devices.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleAdmin)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageMistake("devices rm", fmt.Errorf("devices rm: want one device ID, got %d arguments", len(pos)))
	}
	if err := deviceID("devices rm", pos[0]); err != nil {
		return err
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("devices rm", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, toolsTimeout)
	defer cancel()
	ctx, denied := watchPermissions(ctx, nc, "only an admin identity may remove devices (--creds)")
	if err := jotunheim.NewClient(nc).Remove(ctx, pos[0]); err != nil {
		return toolsFailed("devices rm", denied(err))
	}
	fmt.Fprintf(stdout, "removed %s\n", pos[0])
	return nil
}

func devicesStream(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("devices stream", `Usage: loki devices stream ID SOURCE [--bytes N] [-o FILE] [flags]

Reads device ID's stream source SOURCE (the streams in 'loki devices show
ID'; the sim board has "sine" and "pattern") and writes its bytes to
standard output or FILE until --bytes, the source's end, or Ctrl-C. Flow
is credit-based: a slow writer slows the device, or makes it drop chunks
when the source's policy is drop (counted on standard error at the end).`, stderr)
	nf := addNATSFlags(fs, subjects.RoleClient)
	maxBytes := fs.Uint64("bytes", 0, "stop after `N` bytes (0: until the source ends or Ctrl-C)")
	var out string
	fs.StringVar(&out, "output", "", "write to `FILE` instead of standard output")
	fs.StringVar(&out, "o", "", "short for --output")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fs.Usage()
		return usageMistake("devices stream", fmt.Errorf("devices stream: want a device ID and a SOURCE, got %d arguments", len(pos)))
	}
	if err := deviceID("devices stream", pos[0]); err != nil {
		return err
	}
	w := stdout
	if out != "" {
		f, err := os.Create(out)
		if err != nil {
			return usageMistake("devices stream", fmt.Errorf("devices stream: %w", err))
		}
		defer f.Close()
		w = f
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("devices stream", err)
	}
	defer nc.Close()
	r, err := jotunheim.OpenStream(ctx, nc, pos[0], pos[1], *maxBytes, jotunheim.StreamOptions{})
	if err != nil {
		return toolsFailed("devices stream", err)
	}
	defer r.Close()
	for {
		c, err := r.Next(ctx)
		if errors.Is(err, io.EOF) || (err != nil && ctx.Err() != nil) {
			break
		}
		if err != nil {
			return toolsFailed("devices stream", err)
		}
		if _, err := w.Write(c.GetData()); err != nil {
			return toolsFailed("devices stream", fmt.Errorf("write: %w", err))
		}
		if c.GetEof() {
			break
		}
	}
	if st := r.Stats(); st.Dropped > 0 {
		fmt.Fprintf(stderr, "loki: the device dropped %d chunks (the reader was slower than the source)\n", st.Dropped)
	}
	return nil
}
