package ota

import "errors"

// ErrCrash is what an installer made WithCrashAfter returns at its step:
// the operation stops there, with no clean-up, as a power cut would stop it.
var ErrCrash = errors.New("simulated crash")

// WithCrashAfter stops Install or a rollback right after step.
func WithCrashAfter(step Step) Option {
	return func(i *Installer) {
		i.afterStep = func(s Step) error {
			if s == step {
				return ErrCrash
			}
			return nil
		}
	}
}
