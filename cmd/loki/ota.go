package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/loki-iot/loki/devices/ota"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/jetstream"
)

// otaCommands are the subcommands of `loki ota`.
var otaCommands = []string{"keygen", "sign", "publish", "releases", "rollout", "status"}

const otaSynopsis = `Usage: loki ota keygen [--out NAME]
       loki ota sign --key NAME.key --name N --version V --target OS/ARCH[/MODEL] --security-counter C FILE
       loki ota publish FILE.ota.json FILE
       loki ota releases
       loki ota rollout NAME@VERSION (--devices a,b | --model M | --all) [--canary 10%] [--failure-threshold 1]
       loki ota status [ROLLOUT] [--watch]

Signed over-the-air updates of Jotunheim devices (docs/OTA.md). The operator
keeps the private key off the platform: keygen and sign run offline; the
service trusts the public key listed in [jotunheim] ota_keys. publish and
rollout need the admin identity. 'loki ota COMMAND --help' shows a
subcommand's flags.`

func cmdOTA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "keygen":
			return otaKeygen(args[1:], stdout, stderr)
		case "sign":
			return otaSign(args[1:], stdout, stderr)
		case "publish":
			return otaPublish(ctx, args[1:], stdout, stderr)
		case "releases":
			return otaReleases(ctx, args[1:], stdout, stderr)
		case "rollout":
			return otaRollout(ctx, args[1:], stdout, stderr)
		case "status":
			return otaStatus(ctx, args[1:], stdout, stderr)
		}
	}
	fs := newFlags("ota", otaSynopsis, stderr)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return usageMistake("ota", errors.New("ota: name a command: "+strings.Join(otaCommands, ", ")))
	}
	return usageMistake("ota", fmt.Errorf("ota: unknown command %q (commands: %s)", pos[0], strings.Join(otaCommands, ", ")))
}

// failed is an operation that failed: exit code 1.
func failed(cmd string, err error) error {
	return &exitError{code: 1, err: fmt.Errorf("%s: %w", cmd, err)}
}

func otaKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ota keygen", `Usage: loki ota keygen [--out NAME]

Generates an ed25519 release signing key pair: NAME.pub, the public key to
list in [jotunheim] ota_keys and to pin in each device's config, and
NAME.key (mode 0600), the private key that signs releases. Keep NAME.key
offline. Existing files are never overwritten.`, stderr)
	out := fs.String("out", "ota-operator", "file name without extension")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageMistake("ota keygen", fmt.Errorf("ota keygen: unexpected argument %q", pos[0]))
	}
	pub, priv, err := ota.GenerateKey()
	if err != nil {
		return failed("ota keygen", err)
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{*out + ".key", ota.MarshalPrivateKey(priv), 0o600}, {*out + ".pub", ota.MarshalPublicKey(pub), 0o644}} {
		if err := writeNew(f.path, f.data, f.mode); err != nil {
			return failed("ota keygen", err)
		}
	}
	fmt.Fprintf(stdout, "wrote %s.pub (list it in [jotunheim] ota_keys and pin it on the devices) and %s.key (keep it offline)\n", *out, *out)
	return nil
}

// writeNew writes data to a file that must not exist yet.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// signedRelease is the file loki ota sign writes: the canonical manifest
// and its signature (base64).
type signedRelease struct {
	Manifest  string `json:"manifest"`
	Signature []byte `json:"signature"`
}

func otaSign(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ota sign", `Usage: loki ota sign --key NAME.key --name N --version V --target OS/ARCH[/MODEL] --security-counter C FILE [--out F]

Hashes FILE, writes its manifest (name, version, target, size, SHA-256,
security counter) and signs it with the private key. The result goes to
FILE.ota.json (or --out; "-" prints it), ready for 'loki ota publish'.
Raise the security counter with a release that fixes a vulnerability:
devices refuse a counter lower than the highest they committed.`, stderr)
	key := fs.String("key", "", "private key file ('loki ota keygen')")
	name := fs.String("name", "jotunheim", "artefact name")
	ver := fs.String("version", "", "release version, e.g. v1.4.0")
	target := fs.String("target", "", "os/arch or os/arch/model, e.g. linux/arm/pi-zero")
	counter := fs.Uint64("security-counter", 0, "anti-rollback counter")
	out := fs.String("out", "", "output file (default FILE.ota.json; - for stdout)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageMistake("ota sign", fmt.Errorf("ota sign: want one FILE, got %d arguments", len(pos)))
	}
	if *key == "" || *ver == "" || *target == "" {
		return usageMistake("ota sign", errors.New("ota sign: --key, --version and --target are required"))
	}
	parts := strings.Split(*target, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return usageMistake("ota sign", fmt.Errorf("ota sign: --target %q: want os/arch or os/arch/model", *target))
	}
	t := ota.Target{OS: parts[0], Arch: parts[1]}
	if len(parts) == 3 {
		t.Model = parts[2]
	}
	kb, err := os.ReadFile(*key)
	if err != nil {
		return failed("ota sign", err)
	}
	priv, err := ota.ParsePrivateKey(kb)
	if err != nil {
		return failed("ota sign", fmt.Errorf("%s: %w", *key, err))
	}
	size, sum, err := hashFile(pos[0])
	if err != nil {
		return failed("ota sign", err)
	}
	m := ota.Manifest{Name: *name, Version: *ver, Target: t, Size: size, SHA256: sum, SecurityCounter: *counter}
	if err := m.Validate(); err != nil {
		return usageMistake("ota sign", fmt.Errorf("ota sign: %w", err))
	}
	sig, err := ota.Sign(m, priv)
	if err != nil {
		return failed("ota sign", err)
	}
	canon, _ := m.Canonical()
	b, _ := json.MarshalIndent(signedRelease{Manifest: string(canon), Signature: sig}, "", "  ")
	b = append(b, '\n')
	dst := *out
	if dst == "" {
		dst = pos[0] + ".ota.json"
	}
	if dst == "-" {
		_, err := stdout.Write(b)
		return err
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		return failed("ota sign", err)
	}
	fmt.Fprintf(stdout, "signed %s %s (%d bytes, sha256 %s) into %s\n", m.Name, m.Version, m.Size, m.SHA256, dst)
	return nil
}

func hashFile(path string) (uint64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", err
	}
	return uint64(n), hex.EncodeToString(h.Sum(nil)), nil
}

func otaPublish(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ota publish", `Usage: loki ota publish FILE.ota.json FILE [flags]

Puts FILE in the firmware object store and publishes the signed release:
the service checks the signature against [jotunheim] ota_keys and the
stored binary against the manifest, and records it. Connects as the local
admin identity; only admins may publish.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleAdmin)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fs.Usage()
		return usageMistake("ota publish", fmt.Errorf("ota publish: want FILE.ota.json and FILE, got %d arguments", len(pos)))
	}
	b, err := os.ReadFile(pos[0])
	if err != nil {
		return failed("ota publish", err)
	}
	var sr signedRelease
	if err := json.Unmarshal(b, &sr); err != nil {
		return failed("ota publish", fmt.Errorf("%s: not a signed release ('loki ota sign' writes one): %w", pos[0], err))
	}
	m, err := ota.DecodeManifest([]byte(sr.Manifest))
	if err != nil {
		return failed("ota publish", fmt.Errorf("%s: %w", pos[0], err))
	}
	f, err := os.Open(pos[1])
	if err != nil {
		return failed("ota publish", err)
	}
	defer f.Close()
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("ota publish", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	ctx, denied := watchPermissions(ctx, nc, "only an admin identity may publish releases (--creds)")
	js, err := jetstream.New(nc)
	if err != nil {
		return toolsFailed("ota publish", err)
	}
	obs, err := js.ObjectStore(ctx, subjects.FirmwareBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obs, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: subjects.FirmwareBucket, Storage: jetstream.FileStorage})
	}
	if err != nil {
		return toolsFailed("ota publish", denied(fault.Wrap(fault.Unavailable, err, "object store %s: %v", subjects.FirmwareBucket, err)))
	}
	object := m.Name + "-" + m.Version
	if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: object, Description: "release " + m.Name + " " + m.Version}, f); err != nil {
		return toolsFailed("ota publish", denied(fault.Wrap(fault.Unavailable, err, "put %s: %v", object, err)))
	}
	rel, err := jotunheim.NewClient(nc).PublishRelease(ctx, jotunheim.PublishRequest{Manifest: sr.Manifest, Signature: sr.Signature, Object: object})
	if err != nil {
		return toolsFailed("ota publish", denied(err))
	}
	fmt.Fprintf(stdout, "published %s@%s for %s (%d bytes)\n", rel.Manifest.Name, rel.Manifest.Version, rel.Manifest.Target, rel.Manifest.Size)
	return nil
}

func otaReleases(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ota releases", `Usage: loki ota releases [flags]

Lists the published releases.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleAdmin)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageMistake("ota releases", fmt.Errorf("ota releases: unexpected argument %q", pos[0]))
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("ota releases", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, toolsTimeout)
	defer cancel()
	rels, err := jotunheim.NewClient(nc).Releases(ctx)
	if err != nil {
		return toolsFailed("ota releases", err)
	}
	for _, r := range rels {
		fmt.Fprintf(stdout, "%s@%s\t%s\t%d bytes\tcounter %d\t%s\n", r.Manifest.Name, r.Manifest.Version, r.Manifest.Target,
			r.Manifest.Size, r.Manifest.SecurityCounter, r.PublishedAt.Local().Format(time.DateTime))
	}
	return nil
}

func otaRollout(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ota rollout", `Usage: loki ota rollout NAME@VERSION (--devices a,b | --model M | --all) [flags]

Starts a rollout of a published release. With --canary P%, P percent of the
devices (at least one) update first and the rest once all of them
committed; the rollout halts when --failure-threshold devices (a count, or
a percentage like 10%) failed, refused or rolled back. Prints the rollout
id; follow it with 'loki ota status ID --watch'.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleAdmin)
	devices := fs.String("devices", "", "comma-separated device ids")
	model := fs.String("model", "", "every known device of this model")
	all := fs.Bool("all", false, "every known device (of the release's model when it names one)")
	canary := fs.String("canary", "", "canary percentage, e.g. 10%")
	threshold := fs.String("failure-threshold", "1", "failures that halt the rollout: a count or a percentage")
	window := fs.Duration("health-window", 0, "health window passed to the devices (0: their own)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageMistake("ota rollout", fmt.Errorf("ota rollout: want one NAME@VERSION, got %d arguments", len(pos)))
	}
	name, ver, ok := strings.Cut(pos[0], "@")
	if !ok || name == "" || ver == "" {
		return usageMistake("ota rollout", fmt.Errorf("ota rollout: %q: want NAME@VERSION", pos[0]))
	}
	req := jotunheim.RolloutRequest{Name: name, Version: ver, Model: *model, All: *all, FailureThreshold: *threshold,
		HealthWindowSeconds: uint32(window.Seconds())}
	if *devices != "" {
		req.Devices = strings.Split(*devices, ",")
	}
	if *canary != "" {
		p, err := strconv.Atoi(strings.TrimSuffix(*canary, "%"))
		if err != nil || p < 1 || p > 99 {
			return usageMistake("ota rollout", fmt.Errorf("ota rollout: --canary %q: want 1%% to 99%%", *canary))
		}
		req.Strategy, req.CanaryPercent = jotunheim.StrategyCanary, p
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("ota rollout", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, toolsTimeout)
	defer cancel()
	ctx, denied := watchPermissions(ctx, nc, "only an admin identity may start rollouts (--creds)")
	ro, err := jotunheim.NewClient(nc).Rollout(ctx, req)
	if err != nil {
		return toolsFailed("ota rollout", denied(err))
	}
	fmt.Fprintf(stdout, "rollout %s: %s@%s to %d devices (%s)\n", ro.ID, ro.Name, ro.Version, len(ro.Devices), ro.Strategy)
	return nil
}

func otaStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ota status", `Usage: loki ota status [ROLLOUT] [--watch] [flags]

Shows a rollout (or every rollout) with a progress bar per device. With
--watch it prints each line again when it changes, until the rollouts shown
have completed or halted (or Ctrl-C): plain lines, fit for a log as well
as a terminal. Exits 1 when a rollout shown halted.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleAdmin)
	watch := fs.Bool("watch", false, "follow the rollout until it ends")
	interval := fs.Duration("interval", time.Second, "how often --watch asks")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageMistake("ota status", fmt.Errorf("ota status: unexpected argument %q", pos[1]))
	}
	id := ""
	if len(pos) == 1 {
		id = pos[0]
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("ota status", err)
	}
	defer nc.Close()
	jc := jotunheim.NewClient(nc)
	shown := map[string]string{}
	for {
		cctx, cancel := context.WithTimeout(ctx, toolsTimeout)
		ros, err := jc.RolloutStatus(cctx, id)
		cancel()
		if err != nil {
			return toolsFailed("ota status", err)
		}
		running, halted := false, false
		for _, ro := range ros {
			for _, l := range rolloutLines(ro) {
				if !*watch || shown[l[0]] != l[1] {
					fmt.Fprintln(stdout, l[1])
					shown[l[0]] = l[1]
				}
			}
			running = running || ro.State == jotunheim.RolloutRunning
			halted = halted || ro.State == jotunheim.RolloutHalted
		}
		if !*watch || !running {
			if halted {
				return &exitError{code: 1, err: errors.New("ota status: a rollout halted")}
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*interval):
		}
	}
}

// rolloutLines renders a rollout as lines, each with a key that names what
// it shows (so --watch reprints only what changed).
func rolloutLines(ro *jotunheim.Rollout) [][2]string {
	head := fmt.Sprintf("rollout %s  %s@%s  %s  %s", ro.ID, ro.Name, ro.Version, ro.Strategy, ro.State)
	if ro.Reason != "" {
		head += ": " + ro.Reason
	}
	lines := [][2]string{{ro.ID, head}}
	ids := make([]string, 0, len(ro.Devices))
	for id := range ro.Devices {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	width := 0
	for _, id := range ids {
		width = max(width, len(id))
	}
	for _, id := range ids {
		d := ro.Devices[id]
		tag := ""
		if d.Canary {
			tag = " (canary)"
		}
		l := fmt.Sprintf("  %-*s %s %3d%%  %s%s%s", width, id, progressBar(phasePercent(d)), phasePercent(d), d.Phase, reasonText(d.Reason), tag)
		lines = append(lines, [2]string{ro.ID + "/" + id, l})
	}
	return lines
}

// phasePercent is how far along a device is, for its bar.
func phasePercent(d *jotunheim.DeviceRollout) int {
	switch d.Phase {
	case "downloading":
		return int(min(d.Percent, 100))
	case "verifying", "installing", "restarting", jotunheim.PhaseCommitted:
		return 100
	}
	return 0
}

func progressBar(pct int) string {
	const n = 20
	full := pct * n / 100
	return "[" + strings.Repeat("#", full) + strings.Repeat(".", n-full) + "]"
}

func reasonText(r string) string {
	if r == "" {
		return ""
	}
	return ": " + r
}
