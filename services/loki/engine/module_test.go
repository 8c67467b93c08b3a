package engine_test

import (
	"reflect"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
	lua "github.com/yuin/gopher-lua"
)

func TestModuleConverters(t *testing.T) {
	L := lua.NewState()
	defer L.Close()
	values := []any{nil, true, 1.5, "s", []any{1.0, "two"}, map[string]any{"a": map[string]any{"b": []any{}}}}
	for _, v := range values {
		lv, err := engine.ToLua(L, v)
		if err != nil {
			t.Fatalf("ToLua(%v): %v", v, err)
		}
		back, err := engine.FromLua(lv)
		if err != nil {
			t.Fatalf("FromLua(%v): %v", v, err)
		}
		want := v
		if m, ok := v.(map[string]any); ok && len(m["a"].(map[string]any)["b"].([]any)) == 0 {
			// An empty Lua table has no array/object marker: it comes back as {}.
			want = map[string]any{"a": map[string]any{"b": map[string]any{}}}
		}
		if !reflect.DeepEqual(back, want) {
			t.Errorf("round trip: got %#v, want %#v", back, want)
		}
	}
	if _, err := engine.FromLua(L.NewFunction(func(*lua.LState) int { return 0 })); fault.CodeOf(err) != fault.ScriptError {
		t.Errorf("function: got %v, want SCRIPT_ERROR", err)
	}
	big := L.NewTable()
	big.Append(lua.LString(string(make([]byte, 100))))
	if _, err := engine.MarshalLua(big, 10); fault.CodeOf(err) != fault.ResourceExhausted {
		t.Errorf("over cap: got %v, want RESOURCE_EXHAUSTED", err)
	}
}
