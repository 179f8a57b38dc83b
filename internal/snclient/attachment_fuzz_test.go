package snclient

import (
	"encoding/json"
	"strconv"
	"testing"
)

// FuzzDecodeAttachment: whatever a metadata row or X-Attachment-Metadata
// header holds, DecodeAttachment returns an error or an attachment with a
// valid sys_id, a non-negative size and a hash that is "" or 64 lowercase
// hex characters; and what it decodes survives being written back as
// ServiceNow writes it (every value a string) and read again.
func FuzzDecodeAttachment(f *testing.F) {
	f.Add(`{"size_bytes":"5881","file_name":"test","sys_mod_count":"1","table_name":"incident","sys_id":"41f9dad09783111084d57e121153af94","content_type":"application/json","sys_created_on":"2022-11-05 00:53:43","table_sys_id":"1c741bd70b2322007518478d83673af3","hash":"8671fa6613cd1c6e82c0e1d6b940ae0771d1d8b3f56019f8274ed501407ffc2a","download_link":"https://x/api/now/attachment/41f9dad09783111084d57e121153af94/file"}`)
	f.Add(`{  "size_bytes" : "462",  "sys_id" : "615ea769c0a80166001cf5f2367302f5",  "hash" : ""}`)
	f.Add(`{"sys_id":{"value":"615ea769c0a80166001cf5f2367302f5"},"size_bytes":12,"hash":null}`)
	f.Add(`{"sys_id":"615ea769c0a80166001cf5f2367302f5","size_bytes":"-1"}`)
	f.Add(`{"sys_id":"615EA769C0A80166001CF5F2367302F5","size_bytes":"1","hash":"8671FA6613CD1C6E82C0E1D6B940AE0771D1D8B3F56019F8274ED501407FFC2A"}`)
	f.Add(`[]`)
	f.Add(`null`)
	f.Fuzz(func(t *testing.T, in string) {
		a, err := DecodeAttachment([]byte(in))
		if err != nil {
			return
		}
		if !sysIDRE.MatchString(a.SysID) || a.SizeBytes < 0 || (a.Hash != "" && !isSHA256Hex(a.Hash)) {
			t.Fatalf("decoded %+v from %q: invalid sys_id, size or hash accepted", a, in)
		}
		back, err := json.Marshal(map[string]string{
			"sys_id": a.SysID, "file_name": a.FileName, "content_type": a.ContentType, "table_name": a.TableName,
			"table_sys_id": a.TableSysID, "size_bytes": strconv.FormatInt(a.SizeBytes, 10), "hash": a.Hash,
			"sys_created_on": a.CreatedOn, "download_link": a.DownloadLink,
		})
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeAttachment(back)
		if err != nil || again != a {
			t.Fatalf("round trip of %+v: %+v, %v", a, again, err)
		}
	})
}
