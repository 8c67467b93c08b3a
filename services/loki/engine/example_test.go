package engine_test

import (
	"context"
	"fmt"
	"time"

	"github.com/loki-iot/loki/services/loki/engine"
)

func Example() {
	en := engine.New(engine.Config{}, nil) // default limits, no modules

	// Compile once per tool revision; the Program is shared by all executions.
	prog, err := engine.Compile("greet", `
local words = {}
for i = 1, times do words[i] = greeting end
return table.concat(words, " ") .. ", " .. name .. "!"`)
	if err != nil {
		fmt.Println(err)
		return
	}
	params := []engine.Param{
		{Name: "name", Type: engine.String, Required: true},
		{Name: "greeting", Type: engine.String, Default: "hello"},
		{Name: "times", Type: engine.Integer, Default: 1.0},
	}

	// Per request: decode the arguments, then run under a deadline.
	args, err := engine.DecodeArgs(params, []byte(`{"name": "Loki", "times": 2}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out, err := en.Run(ctx, engine.Exec{
		Tool: "greet", ExecID: "e1", Program: prog, Params: params, Args: args, Returns: engine.String,
	})
	fmt.Println(string(out), err)

	// Errors are *fault.Error values naming the tool and the line.
	_, err = en.Run(ctx, engine.Exec{Tool: "greet", Program: prog, Params: params, Returns: engine.String})
	fmt.Println(err)
	// Output:
	// "hello hello, Loki!" <nil>
	// SCRIPT_ERROR: tool "greet": line 3: for statement limit must be a number
}
