package loki

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki/isolate"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// ErrConfig is wrapped by every error of LoadTools.
var ErrConfig = errors.New("invalid tool config")

// MaxConfigBytes caps a tool config file.
const MaxConfigBytes = 4 << 20

// toolsFile is the TOML shape of a tool config file.
type toolsFile struct {
	Tools []toolEntry `toml:"tools"`
}

type toolEntry struct {
	Name        string       `toml:"name"`
	Description string       `toml:"description"`
	Returns     string       `toml:"returns"`
	Timeout     duration     `toml:"timeout"`
	Memory      string       `toml:"memory"`
	CPU         string       `toml:"cpu"`
	Script      string       `toml:"script"`
	ScriptFile  string       `toml:"script_file"`
	Grants      []string     `toml:"grants"`
	Params      []paramEntry `toml:"params"`
}

type paramEntry struct {
	Name        string `toml:"name"`
	Type        string `toml:"type"`
	Required    bool   `toml:"required"`
	Description string `toml:"description"`
	Default     any    `toml:"default"`
}

// duration decodes "2s"-style strings, recording whether it was set.
type duration struct {
	d   time.Duration
	set bool
}

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("timeout %q: want a duration such as \"2s\" or \"500ms\"", b)
	}
	d.d, d.set = v, true
	return nil
}

// LoadTools reads a TOML tool config, resolves script files relative to it,
// and validates and compiles every tool. It returns all tools or none: the
// first problem is reported as an error wrapping ErrConfig that names the
// file, the line where known, and the tool.
func LoadTools(path string) ([]*Compiled, error) {
	data, err := readLimited(path, MaxConfigBytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return ParseTools(path, data, os.DirFS(filepath.Dir(path)))
}

// ParseTools is LoadTools on data already read; path names the file in errors
// and script_file paths are resolved in dir.
func ParseTools(path string, data []byte, dir fs.FS) ([]*Compiled, error) {
	var f toolsFile
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%w: %s:%d: %s", ErrConfig, path, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrConfig, path, err)
	}
	lines := toolLines(data)
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return nil, fmt.Errorf("%w: %s:%d: unknown key %q", ErrConfig, path, keyLine(data, k), k.String())
	}
	if len(f.Tools) == 0 {
		return nil, fmt.Errorf("%w: %s: no [[tools]] defined", ErrConfig, path)
	}
	out := make([]*Compiled, 0, len(f.Tools))
	names := map[string]int{}
	for i, te := range f.Tools {
		at := path
		if i < len(lines) {
			at = fmt.Sprintf("%s:%d", path, lines[i])
		}
		if prev, dup := names[te.Name]; dup {
			return nil, fmt.Errorf("%w: %s: tool %q: duplicate name (first defined as tool #%d)", ErrConfig, at, te.Name, prev+1)
		}
		names[te.Name] = i
		def, err := te.toProto(dir)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: tool %q: %w", ErrConfig, at, te.Name, err)
		}
		c, err := Compile(def)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrConfig, at, err)
		}
		out = append(out, c)
	}
	return out, nil
}

func (te toolEntry) toProto(dir fs.FS) (*lokiv1.Tool, error) {
	t := &lokiv1.Tool{
		Name:        te.Name,
		Description: te.Description,
		Returns:     te.Returns,
		Grants:      te.Grants,
		Source:      te.Script,
		SourceName:  te.Name,
	}
	if te.Timeout.set {
		t.Timeout = durationpb.New(te.Timeout.d)
	}
	if te.Memory != "" {
		m, err := isolate.ParseSize(te.Memory)
		if err != nil || m == 0 {
			return nil, fmt.Errorf("memory = %q: want a size such as \"64MiB\", \"512KiB\" or \"1GiB\"", te.Memory)
		}
		t.MemoryBytes = m
	}
	if te.CPU != "" {
		d, err := time.ParseDuration(te.CPU)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("cpu = %q: want a positive CPU time such as \"500ms\" or \"2s\"", te.CPU)
		}
		t.Cpu = durationpb.New(d)
	}
	switch {
	case te.Script != "" && te.ScriptFile != "":
		return nil, errors.New("set script or script_file, not both")
	case te.ScriptFile != "":
		src, err := readScript(dir, te.ScriptFile)
		if err != nil {
			return nil, err
		}
		t.Source, t.SourceName = src, te.ScriptFile
	case te.Script == "":
		return nil, errors.New("script or script_file is required")
	}
	for _, p := range te.Params {
		pp := &lokiv1.Param{Name: p.Name, Type: p.Type, Required: p.Required, Description: p.Description}
		if p.Default != nil {
			v, err := structpb.NewValue(jsonShape(p.Default))
			if err != nil {
				return nil, fmt.Errorf("param %q: default: %w", p.Name, err)
			}
			pp.Default = v
		}
		t.Params = append(t.Params, pp)
	}
	return t, nil
}

// jsonShape turns TOML-decoded values into JSON-shaped ones: integers become
// float64 and nested tables map[string]any.
func jsonShape(v any) any {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonShape(e)
		}
		return out
	case []map[string]any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonShape(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonShape(e)
		}
		return out
	case time.Time:
		return x.Format(time.RFC3339Nano)
	}
	return v
}

var toolHeader = regexp.MustCompile(`^\s*\[\[\s*tools\s*\]\]`)

// toolLines returns the line of each [[tools]] header, in order.
func toolLines(data []byte) []int {
	var lines []int
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), MaxConfigBytes)
	for n := 1; sc.Scan(); n++ {
		if toolHeader.Match(sc.Bytes()) {
			lines = append(lines, n)
		}
	}
	return lines
}

// keyLine finds the first line that assigns the key's last piece, or the
// table header naming it; 0 when not found. BurntSushi/toml keeps key
// positions private, so this is a best effort for error messages.
func keyLine(data []byte, k toml.Key) int {
	if len(k) == 0 {
		return 0
	}
	last := regexp.QuoteMeta(k[len(k)-1])
	re := regexp.MustCompile(`^\s*("?` + last + `"?\s*=|\[+\s*` + regexp.QuoteMeta(k.String()) + `\s*\]+)`)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), MaxConfigBytes)
	for n := 1; sc.Scan(); n++ {
		if re.Match(sc.Bytes()) {
			return n
		}
	}
	return 0
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%s is %d bytes: at most %d", path, st.Size(), limit)
	}
	var buf bytes.Buffer
	_, err = buf.ReadFrom(f)
	return buf.Bytes(), err
}

func readScript(dir fs.FS, name string) (string, error) {
	clean := filepath.ToSlash(filepath.Clean(name))
	if filepath.IsAbs(name) || strings.HasPrefix(clean, "../") || clean == ".." {
		return "", fmt.Errorf("script_file %q: must be a relative path inside the config's directory", name)
	}
	b, err := fs.ReadFile(dir, clean)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("script_file %q: file not found", name)
	}
	if err != nil {
		return "", fmt.Errorf("script_file %q: %w", name, err)
	}
	if len(b) > MaxSourceBytes {
		return "", fmt.Errorf("script_file %q is %d bytes: at most %d", name, len(b), MaxSourceBytes)
	}
	return string(b), nil
}
