// Package examples ships the example tools that `loki up` loads when no
// config is given, embedded so the binary works from any directory.
package examples

import "embed"

// ToolsFile is the name of the example tool config inside FS.
const ToolsFile = "tools.toml"

// ToolFiles are every example tool config `loki up` loads, in order.
var ToolFiles = []string{ToolsFile, "hel_tools.toml", "fenrir_tools.toml", "net.toml"}

// FS holds the tool configs and the scripts they reference.
//
//go:embed *.toml scripts
var FS embed.FS
