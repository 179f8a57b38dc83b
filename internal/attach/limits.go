package attach

import (
	"errors"
	"fmt"
	"mime"
	"strings"
)

// Limits says which files are synced: at most MaxBytes, of a content type
// Allow matches (empty: any) and Deny does not.
type Limits struct {
	MaxBytes int64    // 0: none is synced
	Allow    []string // type/subtype or type/*
	Deny     []string
}

// ErrRefused marks a file the limits refuse: its message is rejected and
// dead-lettered, never retried.
var ErrRefused = errors.New("attachment refused by the bridge's limits")

// Hints of the refusals.
const (
	HintTooLarge = "the file is larger than BRIDGE_ATTACHMENT_MAX_BYTES: raise it (ServiceNow's own limit is com.glide.attachment.max_size), or keep the file out of the sync"
	HintType     = "the content type is refused by BRIDGE_ATTACHMENT_TYPES_ALLOW / BRIDGE_ATTACHMENT_TYPES_DENY: change the lists to sync it"
	HintOff      = "attachments are not synced (BRIDGE_ATTACHMENT_MAX_BYTES=0)"
	HintInstance = "the instance refused the file's size (com.glide.attachment.max_size): raise the property, or keep the file out of the sync"
)

// refusal is why l refuses a file of that size and content type, or nil;
// size < 0 is unknown (checked again once known).
func (l Limits) refusal(size int64, contentType string) (err error, hint string) {
	switch {
	case l.MaxBytes == 0:
		return fmt.Errorf("%w: attachments are off", ErrRefused), HintOff
	case size > l.MaxBytes:
		return fmt.Errorf("%w: %d bytes is over BRIDGE_ATTACHMENT_MAX_BYTES (%d)", ErrRefused, size, l.MaxBytes), HintTooLarge
	}
	if len(l.Allow) == 0 && len(l.Deny) == 0 {
		return nil, ""
	}
	ct := mediaType(contentType)
	if matchType(l.Deny, ct) {
		return fmt.Errorf("%w: content type %q is in BRIDGE_ATTACHMENT_TYPES_DENY", ErrRefused, ct), HintType
	}
	if len(l.Allow) > 0 && !matchType(l.Allow, ct) {
		return fmt.Errorf("%w: content type %q is not in BRIDGE_ATTACHMENT_TYPES_ALLOW", ErrRefused, ct), HintType
	}
	return nil, ""
}

// mediaType is the content type without parameters, lowercase;
// application/octet-stream when it says nothing.
func mediaType(ct string) string {
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	ct, _, _ = strings.Cut(ct, ";")
	if ct = strings.ToLower(strings.TrimSpace(ct)); ct != "" {
		return ct
	}
	return "application/octet-stream"
}

// matchType reports whether one of the patterns (type/subtype, type/*, */*)
// matches the media type.
func matchType(patterns []string, mt string) bool {
	major, _, _ := strings.Cut(mt, "/")
	for _, p := range patterns {
		switch {
		case p == mt, p == "*/*":
			return true
		case strings.HasSuffix(p, "/*") && strings.TrimSuffix(p, "/*") == major:
			return true
		}
	}
	return false
}
