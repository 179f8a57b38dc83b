// Package secret holds credentials so that they cannot leak by printing:
// a secret.String formats, logs and marshals as [redacted]. Reveal is the
// one way to the value, called only where it goes on the wire.
package secret

import "log/slog"

// Redacted is what a secret prints as, everywhere.
const Redacted = "[redacted]"

// String is a credential (client secret, access token, a URL with a
// password in it). fmt (%v, %+v, %#v, %s), log/slog, encoding/json and YAML
// print it as [redacted], also inside a struct printed whole.
type String string

// Reveal returns the value; call it only where the secret is used.
func (s String) Reveal() string { return string(s) }

// IsZero reports whether no secret is set.
func (s String) IsZero() bool { return s == "" }

// String implements fmt.Stringer.
func (String) String() string { return Redacted }

// GoString implements fmt.GoStringer, for %#v.
func (String) GoString() string { return Redacted }

// LogValue implements slog.LogValuer.
func (String) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalText keeps the value out of JSON, YAML and the like.
func (String) MarshalText() ([]byte, error) { return []byte(Redacted), nil }
