/*
 * nowbridge webhook (attachment): business rule on sys_attachment, When = after, Insert + Delete.
 * Condition: new global.NowbridgeWebhook().shouldSendAttachment(current)
 * Scope: global (sys_attachment is a global table); one rule serves every synced table: it sends only
 * attachments whose table_name nowbridge.tables lists.
 *
 * Sends the attachment's metadata (table sys_attachment, its sys_id, action insert or delete, and
 * content_type, file_name, hash, size_bytes, table_name, table_sys_id as strings), never the file:
 * the bridge downloads the bytes with the Attachment API. "after" for the same reasons as the other
 * rules (a delete cannot be async; current still holds the last values); the request goes out through
 * executeAsync(), so attaching a file never waits for the bridge.
 */
(function executeRule(current, previous /*null when async*/) {
    var op = String(current.operation());
    new global.NowbridgeWebhook().sendAttachment(current, op === 'delete' ? 'delete' : 'insert');
})(current, previous);
