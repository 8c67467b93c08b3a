#!/usr/bin/env bash
# Regenerates proto/**/*.pb.go with protoc from Debian and the protoc-gen-go
# version pinned in go.mod (go tool), so output is byte-for-byte reproducible.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null && [ -f /usr/include/google/protobuf/struct.proto ] ||
  { echo "protoc missing: apt-get install -y protobuf-compiler libprotobuf-dev" >&2; exit 1; }
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bin/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc
find proto -name '*.proto' -print0 | xargs -0 protoc -I proto -I /usr/include \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" --go_out=proto --go_opt=paths=source_relative \
  --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" --go-grpc_out=proto --go-grpc_opt=paths=source_relative
