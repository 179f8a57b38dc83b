package wire

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// Attachments go both ways through the JetStream object store bucket
// BucketAttachments: a message names the file's object and digest, never
// carries its bytes. The app puts a file there and publishes an add on
// app.<entity>.attachment; the bridge puts ServiceNow's files there and
// publishes an add on bridge.apply.<entity>.attachment. A remove names the
// file by its ids and digest.
const (
	// BucketAttachments is the object store bucket holding the files.
	BucketAttachments = "bridge_attachments"
	// ActionAttachment is the last token of app.<entity>.attachment and
	// bridge.apply.<entity>.attachment.
	ActionAttachment = "attachment"

	// AttachmentAdd and AttachmentRemove are an attachment message's actions.
	AttachmentAdd    = "add"
	AttachmentRemove = "remove"

	// TableAttachment is ServiceNow's attachment table: its webhooks arrive
	// as events of this table (sn.sys_attachment.<insert|delete>).
	TableAttachment = "sys_attachment"
)

// AttachmentMessage is one file added to or removed from a record: the
// body of app.<entity>.attachment (the app's side, stream APP_EVENTS) and
// of bridge.apply.<entity>.attachment (ServiceNow's side, stream
// BRIDGE_APPLY).
//
// An app's add names its record (ExternalID, or SysID for a record the app
// has not linked), its own id of the file (AttachmentID), the object it put
// in BucketAttachments (Object), FileName and ContentType; Digest is
// optional (the object's own is used, and a different one refuses the
// add). An app's remove names the file by AttachmentID, or by the
// AttachmentSysID the bridge handed it.
//
// The bridge's add carries the record (ExternalID "" while the app has not
// linked it, SysID, Table), ServiceNow's id of the file (AttachmentSysID),
// Object, Digest, Size, FileName and ContentType. Its remove means the file
// is gone from the ServiceNow record: the app removes every copy of it on
// the record (AttachmentSysID is the id its add named; Digest the content;
// AttachmentIDs the app's ids the bridge knows of).
//
// The same file (the same digest) on one record is one file on the other
// side: adding it twice is one attachment there, and it goes away there
// when its last copy is removed.
type AttachmentMessage struct {
	Action     string `json:"action"` // AttachmentAdd or AttachmentRemove
	Entity     string `json:"entity,omitempty"`
	ExternalID string `json:"external_id"`
	Table      string `json:"table,omitempty"`
	SysID      string `json:"sys_id,omitempty"` // the record's
	Number     string `json:"number,omitempty"`

	AttachmentID    string   `json:"attachment_id,omitempty"`     // the app's id of the file
	AttachmentIDs   []string `json:"attachment_ids,omitempty"`    // a bridge remove: the app's ids of the copies
	AttachmentSysID string   `json:"attachment_sys_id,omitempty"` // ServiceNow's sys_attachment sys_id

	Object      string `json:"object,omitempty"` // its name in BucketAttachments
	FileName    string `json:"file_name,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Size        int64  `json:"size,omitempty"`
	// Digest is "SHA-256=" and the base64url SHA-256 of the bytes: the
	// object store's own digest (jetstream.ObjectInfo.Digest).
	Digest string `json:"digest,omitempty"`

	// MsgID is the message's Nats-Msg-Id (AppAttachmentMsgID,
	// ApplyAttachmentMsgID). It is not in the body.
	MsgID string `json:"-"`
}

// Body renders the message.
func (m *AttachmentMessage) Body() ([]byte, error) { return json.Marshal(m) }

// AppAttachmentSubject is "app.<entity>.attachment".
func AppAttachmentSubject(entity string) string { return AppSubject(entity, ActionAttachment) }

// ApplyAttachmentSubject is "bridge.apply.<entity>.attachment".
func ApplyAttachmentSubject(entity string) string { return ApplySubject(entity, ActionAttachment) }

// IsAttachmentSubject reports whether subject is an attachment message's:
// app.<entity>.attachment or bridge.apply.<entity>.attachment.
func IsAttachmentSubject(subject string) bool {
	parts := strings.Split(subject, ".")
	switch len(parts) {
	case 3:
		return parts[0] == "app" && parts[1] != "" && parts[2] == ActionAttachment
	case 4:
		return parts[0] == "bridge" && parts[1] == "apply" && parts[2] != "" && parts[3] == ActionAttachment
	}
	return false
}

// AppAttachmentMsgID is the Nats-Msg-Id of an app's attachment message: one
// per entity, external id, attachment id and action.
func AppAttachmentMsgID(entity, externalID, attachmentID, action string) string {
	return entity + ":" + externalID + ":" + ActionAttachment + ":" + attachmentID + ":" + action
}

// ApplyAttachmentMsgID is the Nats-Msg-Id of the bridge's attachment
// message: one per ServiceNow attachment and action.
func ApplyAttachmentMsgID(attachmentSysID, action string) string {
	return TableAttachment + ":" + attachmentSysID + ":" + action
}

// ResultAttachmentMsgID is the Nats-Msg-Id of the result of an app's
// attachment message (key: its AttachmentID, else "sn-" and its
// AttachmentSysID).
func ResultAttachmentMsgID(entity, externalID, key, action, outcome string) string {
	return "result:" + entity + ":" + externalID + ":" + ActionAttachment + ":" + key + ":" + action + ":" + outcome
}

// Digest is the object store's digest of the SHA-256 sum: "SHA-256=" and
// its base64url encoding.
func Digest(sum []byte) string { return "SHA-256=" + base64.URLEncoding.EncodeToString(sum) }

// DigestFromHex is Digest of a SHA-256 given as 64 hex characters (as
// ServiceNow's hash field holds it); ok is false for anything else.
func DigestFromHex(s string) (digest string, ok bool) {
	b, err := hex.DecodeString(strings.ToLower(strings.TrimSpace(s)))
	if err != nil || len(b) != sha256.Size {
		return "", false
	}
	return Digest(b), true
}

// DigestHex is the SHA-256 of a Digest as 64 lowercase hex characters; ok
// is false when digest is not a SHA-256 digest.
func DigestHex(digest string) (string, bool) {
	alg, enc, found := strings.Cut(digest, "=")
	if !found || !strings.EqualFold(alg, "SHA-256") {
		return "", false
	}
	b, err := base64.URLEncoding.DecodeString(enc)
	if err != nil || len(b) != sha256.Size {
		return "", false
	}
	return hex.EncodeToString(b), true
}

// ResultAttachment is what the result of an app's attachment message says
// about the file (Result.Attachment).
type ResultAttachment struct {
	Action          string `json:"action"` // AttachmentAdd or AttachmentRemove
	AttachmentID    string `json:"attachment_id,omitempty"`
	AttachmentSysID string `json:"attachment_sys_id,omitempty"` // ServiceNow's copy, when there is one
	Object          string `json:"object,omitempty"`
	FileName        string `json:"file_name,omitempty"`
	Size            int64  `json:"size,omitempty"`
	Digest          string `json:"digest,omitempty"`
}
