package auth

import (
	"bytes"
	"fmt"
	"os"

	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// ConnectOptions returns the nats.go options that authenticate with the
// credential file path: an nkey seed file as Loki writes it (the
// connection's inbox prefix is then the identity's own, _INBOX.<public
// key>), or a NATS .creds file (user JWT and seed) for servers that use
// JWT accounts.
func ConnectOptions(path string) ([]nats.Option, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("credential %s: %w", path, err)
	}
	if bytes.Contains(b, []byte("BEGIN NATS USER JWT")) {
		return []nats.Option{nats.UserCredentials(path)}, nil
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return nil, fmt.Errorf("credential %s: not an nkey seed or a .creds file: %w", path, err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("credential %s: %w", path, err)
	}
	inbox, err := subjects.Inbox(pub)
	if err != nil {
		return nil, err
	}
	opt, err := nats.NkeyOptionFromSeed(path)
	if err != nil {
		return nil, fmt.Errorf("credential %s: %w", path, err)
	}
	return []nats.Option{opt, nats.CustomInboxPrefix(inbox)}, nil
}
