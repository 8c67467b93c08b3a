// Package examples ships the example tools that `loki up` loads when no
// config is given, embedded so the binary works from any directory.
package examples

import "embed"

// ToolsFile is the name of the example tool config inside FS.
const ToolsFile = "tools.toml"

// FS holds tools.toml and the scripts it references.
//
//go:embed tools.toml scripts
var FS embed.FS
