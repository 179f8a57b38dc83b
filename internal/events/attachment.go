package events

import "github.com/nowbridge/nowbridge/sdk/wire"

// Attachments (issue 13): files of synced records go both ways through the
// object store bucket BucketAttachments; the messages are defined once, in
// sdk/wire.
const (
	BucketAttachments = wire.BucketAttachments
	TableAttachment   = wire.TableAttachment
	ActionAttachment  = wire.ActionAttachment
	AttachmentAdd     = wire.AttachmentAdd
	AttachmentRemove  = wire.AttachmentRemove

	// SNAttachmentSubjects are the attachment webhooks' events in SN_EVENTS.
	SNAttachmentSubjects = "sn." + TableAttachment + ".>"
	// AppAttachmentSubjects are the app's attachment messages in APP_EVENTS.
	AppAttachmentSubjects = "app.*." + ActionAttachment
)

// AttachmentMessage is one file added to or removed from a record.
type AttachmentMessage = wire.AttachmentMessage

// ResultAttachment is the file a result of an attachment message is about.
type ResultAttachment = wire.ResultAttachment

// IsAttachmentSubject reports whether subject is app.<entity>.attachment or
// bridge.apply.<entity>.attachment.
func IsAttachmentSubject(subject string) bool { return wire.IsAttachmentSubject(subject) }
