package hel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// storeError maps an error of JetStream (KV, object store) to a fault, once,
// at the service's edge. what names the thing acted on ("bucket \"b\" key
// \"k\""). Errors with no meaning for the caller become INTERNAL with the
// cause kept for the log.
func storeError(err error, what string) error {
	var fe *fault.Error
	if err == nil || errors.As(err, &fe) {
		return err
	}
	var api *jetstream.APIError
	isAPI := errors.As(err, &api)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return fault.New(fault.NotFound, "%s not found", what)
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
		return fault.New(fault.NotFound, "%s: bucket not found", what)
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return fault.New(fault.NotFound, "%s not found", what)
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		return fault.New(fault.FailedPrecondition, "%s: revision mismatch", what)
	case errors.Is(err, jetstream.ErrKeyExists):
		return fault.New(fault.AlreadyExists, "%s already exists", what)
	case errors.Is(err, jetstream.ErrInvalidKey):
		return fault.New(fault.InvalidArgument, "%s: invalid key", what)
	case isQuotaError(err):
		return fault.Wrap(fault.ResourceExhausted, err, "%s: quota exceeded (%s)", what, quotaReason(err, api))
	case errors.Is(err, jetstream.ErrDigestMismatch):
		return fault.Wrap(fault.Internal, err, "%s: stored object is corrupt (SHA-256 mismatch)", what)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fault.Wrap(fault.DeadlineExceeded, err, "%s: deadline exceeded", what)
	case errors.Is(err, context.Canceled):
		return fault.Wrap(fault.DeadlineExceeded, err, "%s: cancelled", what)
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return fault.Wrap(fault.Unavailable, err, "%s: JetStream unavailable", what)
	case errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported):
		return fault.Wrap(fault.FailedPrecondition, err, "%s: this NATS server does not support per-key TTLs", what)
	case isAPI && api.ErrorCode == jetstream.JSErrCodeBadRequest:
		return fault.Wrap(fault.InvalidArgument, err, "%s: %s", what, api.Description)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// isQuotaError reports a write refused by a stream limit (Hel's quotas are
// stream limits with the discard-new policy) or an oversized message.
func isQuotaError(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) {
		return true
	}
	var api *jetstream.APIError
	if !errors.As(err, &api) {
		return false
	}
	if api.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum {
		return true
	}
	d := api.Description
	return strings.Contains(d, "maximum bytes exceeded") || strings.Contains(d, "maximum messages exceeded") ||
		strings.Contains(d, "message size exceeds maximum") || strings.Contains(d, "insufficient resources")
}

func quotaReason(err error, api *jetstream.APIError) string {
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return "value larger than a NATS message"
	case api != nil:
		return api.Description
	}
	return err.Error()
}

// fileError maps a file system error to a fault. path is the cleaned path.
func fileError(err error, ns, path string) error {
	var fe *fault.Error
	if err == nil || errors.As(err, &fe) {
		return err
	}
	what := fmt.Sprintf("namespace %q path %q", ns, path)
	switch {
	case isEscape(err):
		return fault.New(fault.PermissionDenied, "%s: leaves the namespace (a symlink points outside it)", what)
	case errors.Is(err, syscall.ELOOP):
		return fault.New(fault.PermissionDenied, "%s: too many levels of symlinks", what)
	case errors.Is(err, fs.ErrNotExist):
		return fault.New(fault.NotFound, "%s not found", what)
	case errors.Is(err, syscall.ENOTEMPTY): // before ErrExist, which matches it too
		return fault.New(fault.FailedPrecondition, "%s: directory not empty", what)
	case errors.Is(err, fs.ErrExist):
		return fault.New(fault.AlreadyExists, "%s already exists", what)
	case errors.Is(err, fs.ErrPermission):
		return fault.New(fault.PermissionDenied, "%s: permission denied", what)
	case errors.Is(err, syscall.ENOTDIR):
		return fault.New(fault.FailedPrecondition, "%s: a parent is not a directory", what)
	case errors.Is(err, syscall.EISDIR):
		return fault.New(fault.FailedPrecondition, "%s is a directory", what)
	case errors.Is(err, syscall.ENAMETOOLONG):
		return fault.New(fault.InvalidArgument, "%s: name too long", what)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fault.Wrap(fault.ResourceExhausted, err, "%s: disk full", what)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fault.Wrap(fault.DeadlineExceeded, err, "%s: deadline exceeded", what)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// isEscape reports os.Root's refusal to follow a path out of the root. The
// os package keeps that error unexported, so its text is matched; a test
// (symlink out of the root) fails if it ever changes.
func isEscape(err error) bool {
	return err != nil && strings.Contains(err.Error(), "path escapes from parent")
}
