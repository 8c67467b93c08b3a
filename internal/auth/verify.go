package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"sync"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/bcrypt"
)

// ErrBadLogin is a device login that does not verify: an unknown user, a
// wrong password, or an identity that is not a device's. Which of them is
// never said.
var ErrBadLogin = errors.New("invalid device login")

// VerifyDeviceResponse is the reply of subjects.AuthVerifyDevice to a
// DeviceLogin that verifies.
type VerifyDeviceResponse struct {
	DeviceID string `json:"device_id"`
}

// maxVerified bounds the logins a verifier remembers.
const maxVerified = 1 << 16

// deviceVerifier checks device logins against an Authority. It remembers
// the SHA-256 of each password that passed bcrypt, with the bcrypt hash it
// passed against, so a device that reconnects (or a gateway that checks a
// live link again) costs a hash, not a bcrypt: re-adding or revoking the
// device changes or removes the stored hash and so forgets the password.
// The passwords are random secrets, so their unsalted digests in memory
// give nothing a dictionary could use.
type deviceVerifier struct {
	a *Authority

	mu       sync.Mutex
	verified map[string]verifiedLogin

	dummyOnce sync.Once
	dummy     []byte
}

type verifiedLogin struct {
	hash string
	sum  [sha256.Size]byte
}

func newDeviceVerifier(a *Authority) *deviceVerifier {
	return &deviceVerifier{a: a, verified: map[string]verifiedLogin{}}
}

// warm makes the dummy hash ahead of the first unknown user, so that one
// does not pay two bcrypt rounds.
func (v *deviceVerifier) warm() { v.dummyHash() }

// dummyHash is a bcrypt hash of nothing anyone knows, compared against
// when the user is unknown so that the answer takes as long as for a wrong
// password.
func (v *deviceVerifier) dummyHash() []byte {
	v.dummyOnce.Do(func() {
		b := make([]byte, 18)
		_, _ = rand.Read(b)
		v.dummy, _ = bcrypt.GenerateFromPassword(b, bcrypt.DefaultCost)
	})
	return v.dummy
}

// Verify returns the device id of the device identity whose login is user
// and pass, or ErrBadLogin. It compares with bcrypt (an unknown user costs
// the same) unless it verified this very password against this very hash
// before, and never keeps the password itself.
func (v *deviceVerifier) Verify(user, pass string) (string, error) {
	id, err := v.a.Get(user)
	if err != nil || id.PasswordHash == "" {
		_ = bcrypt.CompareHashAndPassword(v.dummyHash(), []byte(pass))
		return "", ErrBadLogin
	}
	sum := sha256.Sum256([]byte(pass))
	v.mu.Lock()
	known, ok := v.verified[user]
	v.mu.Unlock()
	good := ok && known.hash == id.PasswordHash && subtle.ConstantTimeCompare(known.sum[:], sum[:]) == 1
	if !good {
		good = bcrypt.CompareHashAndPassword([]byte(id.PasswordHash), []byte(pass)) == nil
		if good {
			v.mu.Lock()
			if len(v.verified) >= maxVerified {
				clear(v.verified)
			}
			v.verified[user] = verifiedLogin{hash: id.PasswordHash, sum: sum}
			v.mu.Unlock()
		}
	}
	// Only a device's login speaks for a device: a Home Assistant login
	// has a password too.
	if !good || id.Role != subjects.RoleDevice || id.DeviceID == "" {
		return "", ErrBadLogin
	}
	return id.DeviceID, nil
}

// verifyDevice answers subjects.AuthVerifyDevice: the device id for a
// valid device login, UNAUTHENTICATED for anything else. The password is
// never logged.
func (s *Service) verifyDevice(_ context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	var req DeviceLogin
	if err := json.Unmarshal(r.Data(), &req); err != nil || req.Username == "" || req.Password == "" {
		return nil, nil, fault.New(fault.InvalidArgument, "verify device: want {\"username\":..., \"password\":...}")
	}
	id, err := s.verifier.Verify(req.Username, req.Password)
	if err != nil {
		s.log.Debug("device login refused", "user", req.Username)
		return nil, nil, fault.New(fault.Unauthenticated, "invalid device login")
	}
	b, err := json.Marshal(VerifyDeviceResponse{DeviceID: id})
	return b, nil, err
}
