package attach

import (
	"context"
	"io"

	"github.com/nowbridge/nowbridge/internal/snclient"
)

// ServiceNow is the Attachment API the pipeline calls; *snclient.Client
// satisfies it.
type ServiceNow interface {
	// ListAttachments lists the attachments of one record.
	ListAttachments(ctx context.Context, table, sysID string) ([]Attachment, error)
	// DownloadAttachment streams one attachment's bytes (the caller
	// closes them) with its metadata; an attachment that is gone is an
	// error matching ErrNotFound.
	DownloadAttachment(ctx context.Context, sysID string) (io.ReadCloser, Attachment, error)
	// UploadAttachment attaches a file to a record, its body streamed from
	// Upload.Open (opened once per attempt); a file over the instance's
	// limit is an error matching ErrAttachmentTooLarge.
	UploadAttachment(ctx context.Context, up Upload) (Attachment, error)
	// DeleteAttachment removes an attachment; one already gone is not an
	// error.
	DeleteAttachment(ctx context.Context, sysID string) error
}

// Attachment is a sys_attachment record as the Attachment API returns it.
type Attachment = snclient.Attachment

// Upload is one file to attach.
type Upload = snclient.Upload

// The errors the Attachment API's answers are recognised by.
var (
	ErrNotFound           = snclient.ErrNotFound
	ErrAttachmentTooLarge = snclient.ErrAttachmentTooLarge
)

var _ ServiceNow = (*snclient.Client)(nil)
