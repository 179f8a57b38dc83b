/*
 * NowbridgeWebhook (Script Include, global scope, ES5 for ServiceNow's Rhino engine)
 *
 * Sends one record change to the nowbridge receiver (POST /webhooks/servicenow, SPEC §2), signed with
 * the Standard Webhooks scheme. The business rules "nowbridge webhook (insert/update)" and
 * "nowbridge webhook (delete)" call it; their condition is shouldSend(). The rule "nowbridge webhook
 * (attachment)" on sys_attachment calls sendAttachment() under shouldSendAttachment(): an attachment
 * added to or removed from a record of a synced table, as metadata only (never the file).
 *
 * The body must be byte-identical to Go's events.EncodeWebhookBody for the same record (the bridge's
 * simulator emulates this script): keep the property order below, sort `changed` and the record keys,
 * send every value as a string, and use JSON.stringify. servicenow/testdata/webhook_vectors.json holds
 * the shared vectors; `go test ./servicenow/` runs this file against them through Node.js.
 *
 * selfTest() sends a test event through the same code, keys and property, synchronously, and returns
 * what the bridge answered; the update set's Scripted REST resource POST .../nowbridge/selftest calls it
 * (`bridge doctor --instance-selftest`). Its webhook-id starts with NowbridgeWebhook.SELFTEST_ID_PREFIX,
 * which the bridge verifies like any webhook and never stores.
 *
 * Business rules call it as global.NowbridgeWebhook, so the same rule scripts also run in a scoped
 * application (HR cases' rules live in the sn_hr_core scope); the include is accessible from all
 * application scopes for that reason.
 *
 * System properties (created by the update set):
 *   nowbridge.webhook_url            the receiver, e.g. https://bridge.example.com/webhooks/servicenow
 *   nowbridge.webhook_secret         password2: whsec_<base64>; several, comma-separated, sign with each
 *   nowbridge.tables                 comma-separated tables whose changes are sent (the bridge's
 *                                    BRIDGE_TABLES); default incident
 *   nowbridge.fields.<table>         comma-separated fields sent in `record` (DEFAULT_FIELDS when empty)
 *   nowbridge.http_timeout_ms        RESTMessageV2 timeout (default 10000)
 *   nowbridge.response_wait_seconds  0 (default): fire and forget; N: wait up to N s and log failures
 *   nowbridge.skip_user              optional user name whose changes are not sent (the integration user)
 *   nowbridge.enabled                "false" stops all webhooks
 *   nowbridge.ascii_json             "true": non-ASCII characters go as \uXXXX escapes, so the signed bytes
 *                                    are the same in every charset (the remedy when the self-test reports a
 *                                    charset mismatch); default "false" sends UTF-8 text
 * The secret is never logged, never put in a header and never leaves the instance.
 */
var NowbridgeWebhook = Class.create();

NowbridgeWebhook.PROPERTY_PREFIX = 'nowbridge.';

// Fields sent when nowbridge.fields.<table> is not set: what the bridge's shipped mapping of each table
// uses (deploy/mapping/<table>.yaml), plus number, the fields a close needs and active. Go mirror:
// servicenow.DefaultFields.
NowbridgeWebhook.DEFAULT_FIELDS = {
    incident: 'number,short_description,description,state,priority,urgency,impact,correlation_id,correlation_display,' +
        'close_code,close_notes,active,comments,work_notes',
    change_request: 'number,short_description,description,state,priority,urgency,impact,risk,type,category,start_date,' +
        'end_date,correlation_id,correlation_display,close_code,close_notes,active,comments,work_notes',
    problem: 'number,short_description,description,state,priority,urgency,impact,correlation_id,correlation_display,' +
        'resolution_code,cause_notes,fix_notes,close_notes,duplicate_of,workaround,active,comments,work_notes',
    sc_req_item: 'number,short_description,description,state,stage,priority,urgency,impact,quantity,requested_for,' +
        'due_date,correlation_id,correlation_display,close_notes,active,comments,work_notes',
    sn_hr_core_case: 'number,short_description,description,state,priority,opened_for,subject_person,' +
        'correlation_id,correlation_display,close_notes,active,comments,work_notes'
};

// The attachment rule's table and the sys_attachment fields it sends in `record`, sorted (Go:
// snsim.AttachmentWebhookFields, servicenow.AttachmentFields). No content: the bridge downloads the
// file with the Attachment API. hash (SHA-256 of the file) is skipped on a release without the field.
NowbridgeWebhook.ATTACHMENT_TABLE = 'sys_attachment';
NowbridgeWebhook.ATTACHMENT_FIELDS = ['content_type', 'file_name', 'hash', 'size_bytes', 'table_name', 'table_sys_id'];

// Tables sent while nowbridge.tables is empty or missing (Go: servicenow.DefaultSyncedTables).
NowbridgeWebhook.DEFAULT_TABLES = 'incident';

// The self-test's marker and text (Go: events.SelfTestIDPrefix, events.SelfTestText). The text holds
// Latin-1 (é), Windows-1252 (—) and CJK characters: signed or sent in any charset but UTF-8, its bytes
// change and the bridge can tell which charset was used.
NowbridgeWebhook.SELFTEST_ID_PREFIX = 'nowbridge-selftest:';
NowbridgeWebhook.SELFTEST_TEXT = 'Caf\u00e9 \u2014 \u6771\u4eac';
// A key check value signs this ASCII constant (Go: events.SelfTestKeyCheckData).
NowbridgeWebhook.KEY_CHECK_DATA = 'nowbridge-key-check';
NowbridgeWebhook.CONTENT_TYPE = 'application/json; charset=utf-8';

NowbridgeWebhook.prototype = {
    initialize: function () {},

    // Business-rule condition. False when webhooks are disabled, when gr's table is not listed in
    // nowbridge.tables, or when nowbridge.skip_user names the user making this change (see
    // docs/servicenow-setup.md for the trade-off).
    shouldSend: function (gr) {
        if (this._prop('enabled', 'true') === 'false') {
            return false;
        }
        if (gr && !this.sendsTable(this._str(gr.getTableName()))) {
            return false;
        }
        var skip = this._prop('skip_user', '');
        return skip === '' || this._str(gs.getUserName()) !== skip;
    },

    // Attachment rule condition: like shouldSend, for an attachment (gr, a sys_attachment record)
    // whose record's table (table_name) nowbridge.tables lists.
    shouldSendAttachment: function (gr) {
        if (this._prop('enabled', 'true') === 'false' || !gr) {
            return false;
        }
        if (this._str(gr.getTableName()) !== NowbridgeWebhook.ATTACHMENT_TABLE ||
            !this.sendsTable(this._str(gr.getValue('table_name')))) {
            return false;
        }
        var skip = this._prop('skip_user', '');
        return skip === '' || this._str(gs.getUserName()) !== skip;
    },

    // sendsTable reports whether nowbridge.tables lists table (empty or missing: DEFAULT_TABLES).
    sendsTable: function (table) {
        var value = this._prop('tables', '');
        var list = this._list(value === '' ? NowbridgeWebhook.DEFAULT_TABLES : value);
        for (var i = 0; i < list.length; i++) {
            if (list[i] === table) {
                return true;
            }
        }
        return false;
    },

    // Builds, signs and sends the event for gr. action is 'insert', 'update' or 'delete'.
    // Returns true when the request was handed to the platform.
    send: function (gr, action) {
        var table = this._str(gr.getTableName());
        if (action === 'update' && !gr.changes()) {
            return false; // nothing was written: no new version to report
        }
        return this._deliver(this.buildEvent(gr, action), table, gr.getUniqueValue());
    },

    // Sends an attachment's insert or delete (action 'insert' or 'delete') as its metadata.
    sendAttachment: function (gr, action) {
        return this._deliver(this.buildAttachmentEvent(gr, action), NowbridgeWebhook.ATTACHMENT_TABLE, gr.getUniqueValue());
    },

    // _deliver encodes, signs and sends event (null: nothing to send). Returns true when the request
    // was handed to the platform.
    _deliver: function (event, table, sysID) {
        if (event === null) {
            return false;
        }
        var url = this._prop('webhook_url', '');
        if (url === '') {
            gs.error('nowbridge: property ' + NowbridgeWebhook.PROPERTY_PREFIX +
                'webhook_url is empty; no webhook sent for ' + table + ' ' + sysID);
            return false;
        }
        var keys = this._keys();
        if (keys.length === 0) {
            gs.error('nowbridge: property ' + NowbridgeWebhook.PROPERTY_PREFIX +
                'webhook_secret is empty or not whsec_<base64>; no webhook sent for ' + table + ' ' + sysID);
            return false;
        }
        var body = this.encode(event);
        var id = this.webhookId(event);
        var request = this._request(url, keys, id, body);
        try {
            // executeAsync: the HTTP call runs outside this transaction, so a slow or unreachable
            // bridge never slows the form save. ServiceNow does not retry it; reconcile does.
            var response = request.executeAsync();
            var wait = this._int('response_wait_seconds', 0);
            if (wait > 0) {
                response.waitForResponse(wait);
                this._logOutcome(response, id, url);
            }
        } catch (e) {
            gs.error('nowbridge: webhook ' + id + ' to ' + url + ' was not sent: ' + this._errText(e));
            return false;
        }
        return true;
    },

    // selfTest builds a test event holding NowbridgeWebhook.SELFTEST_TEXT, signs it with the keys of
    // nowbridge.webhook_secret exactly as send() signs a record change, posts it synchronously to
    // nowbridge.webhook_url and returns what happened:
    //   ok           true when the bridge verified it and the text arrived intact
    //   stage        'config' (nothing sent: a property is missing), 'send' (no HTTP answer) or
    //                'bridge' (the bridge answered; see status, result and detail)
    //   status, body the bridge's HTTP status (0 without an answer) and body (at most 4000 characters)
    //   result       the bridge's verdict: 'ok', 'text_altered', or why it refused ('charset',
    //                'secret_mismatch', 'secret_encrypted', 'body_altered', 'timestamp_skew', ...)
    //   detail       the bridge's explanation; error: the outbound call's error message, if any
    // It never throws and never returns or logs key material.
    selfTest: function () {
        var out = {
            ok: false, stage: 'config', webhook_url: '', webhook_id: '', content_type: NowbridgeWebhook.CONTENT_TYPE,
            keys: 0, status: 0, result: '', detail: '', body: '', error: '', elapsed_ms: 0
        };
        var url = this._prop('webhook_url', '');
        out.webhook_url = url;
        if (url === '') {
            out.error = 'property ' + NowbridgeWebhook.PROPERTY_PREFIX + 'webhook_url is empty: set it to the ' +
                'bridge\'s https://<bridge>/webhooks/servicenow';
            return out;
        }
        var entries = this._keyEntries();
        out.keys = entries.length;
        if (entries.length === 0) {
            out.error = this._prop('webhook_secret', '') === '' ?
                'property ' + NowbridgeWebhook.PROPERTY_PREFIX + 'webhook_secret is empty: put one of the bridge\'s ' +
                'BRIDGE_WEBHOOK_SECRETS (whsec_<base64>) in it' :
                'property ' + NowbridgeWebhook.PROPERTY_PREFIX + 'webhook_secret is set but yields no whsec_<base64> ' +
                'value: gs.getProperty may be returning the encrypted form of the password2 property; re-enter the secret';
            return out;
        }
        var keys = [];
        for (var i = 0; i < entries.length; i++) {
            keys.push(entries[i].key);
        }
        var body = this.encode(this.buildSelfTest(entries));
        var id = NowbridgeWebhook.SELFTEST_ID_PREFIX + this._str(gs.generateGUID());
        out.webhook_id = id;
        out.stage = 'send';
        var started = new GlideDateTime().getNumericValue();
        try {
            var response = this._request(url, keys, id, body).execute();
            out.status = parseInt(this._str(response.getStatusCode()), 10) || 0;
            out.body = this._str(response.getBody());
            if (response.haveError()) {
                out.error = this._str(response.getErrorMessage());
            }
        } catch (e) {
            out.error = this._errText(e);
        }
        out.elapsed_ms = new GlideDateTime().getNumericValue() - started;
        if (out.body.length > 4000) {
            out.body = out.body.substring(0, 4000) + '...';
        }
        if (out.status === 0) {
            if (out.error === '') {
                out.error = 'no response from ' + url;
            }
            return out;
        }
        out.stage = 'bridge';
        try {
            var answer = JSON.parse(out.body);
            out.result = this._str(answer.result || answer.diagnosis || '');
            out.detail = typeof answer.detail === 'string' ? answer.detail : '';
            out.ok = out.status === 202 && answer.selftest === true && answer.result === 'ok';
        } catch (e2) {
            out.detail = 'the answer is not JSON: is ' + url + ' the nowbridge receiver?';
        }
        return out;
    },

    // buildSelfTest returns the self-test event (Go: events.SelfTestEvent) for the given key entries:
    // the text, and for each key whether it had the whsec_ prefix, its length and a key check value,
    // so the bridge can tell a wrong secret from an encrypted one. The key itself never leaves.
    buildSelfTest: function (entries) {
        var event = {};
        event.selftest = true;
        var instance = this._str(gs.getProperty('instance_name', ''));
        if (instance !== '') {
            event.instance = instance;
        }
        var by = this._str(gs.getUserName());
        if (by !== '') {
            event.sent_by = by;
        }
        event.text = NowbridgeWebhook.SELFTEST_TEXT;
        event.keys = [];
        for (var i = 0; i < entries.length; i++) {
            var k = entries[i].key;
            event.keys.push({
                whsec_prefix: entries[i].prefixed,
                key_bytes: Math.floor(k.replace(/=+$/, '').length * 3 / 4),
                check: this.keyCheck(k)
            });
        }
        return event;
    },

    // keyCheck is the first 8 characters of the base64 HMAC of KEY_CHECK_DATA under the key: it
    // identifies the key and reveals nothing usable about it (Go: events.SelfTestKeyCheck).
    keyCheck: function (keyBase64) {
        var mac = new GlideCertificateEncryption().generateMac(keyBase64, 'HmacSHA256', NowbridgeWebhook.KEY_CHECK_DATA);
        return this._str(mac).substring(0, 8);
    },

    // buildEvent returns the SPEC §2 event object in the canonical property order, or null when
    // the table has no field list.
    buildEvent: function (gr, action) {
        var table = this._str(gr.getTableName());
        var fields = this._fields(table);
        if (fields.length === 0) {
            gs.error('nowbridge: no field list for table ' + table + ': set property ' +
                NowbridgeWebhook.PROPERTY_PREFIX + 'fields.' + table);
            return null;
        }
        var record = {};
        var changed = [];
        var names = [];
        for (var i = 0; i < fields.length; i++) {
            var f = fields[i];
            if (!gr.isValidField(f)) {
                gs.warn('nowbridge: table ' + table + ' has no field ' + f + ' (listed in ' +
                    NowbridgeWebhook.PROPERTY_PREFIX + 'fields.' + table + '); it is not sent');
                continue;
            }
            var el = gr.getElement(f);
            var didChange = action !== 'delete' && el.changes() === true;
            if (didChange) {
                changed.push(f);
            }
            if (this._isJournal(el)) {
                // Journal fields read as "" through getValue; send the entry this change added.
                record[f] = didChange ? this._str(el.getJournalEntry(1)) : '';
            } else {
                record[f] = this._str(gr.getValue(f));
            }
            names.push(f);
        }
        names.sort();
        changed.sort();
        var sorted = {};
        for (var j = 0; j < names.length; j++) {
            sorted[names[j]] = record[names[j]];
        }

        var event = {};
        var instance = this._str(gs.getProperty('instance_name', ''));
        if (instance !== '') {
            event.instance = instance;
        }
        event.table = table;
        event.sys_id = this._str(gr.getUniqueValue());
        event.action = action;
        event.sys_mod_count = this._str(gr.getValue('sys_mod_count'));
        event.sys_updated_on = this._str(gr.getValue('sys_updated_on'));
        var by = this._str(gr.getValue('sys_updated_by'));
        if (by !== '') {
            event.sys_updated_by = by;
        }
        if (changed.length > 0) {
            event.changed = changed;
        }
        event.record = sorted;
        return event;
    },

    // buildAttachmentEvent returns the SPEC §2 event of an attachment (table sys_attachment, its
    // sys_id, action insert or delete) whose record holds ATTACHMENT_FIELDS as strings.
    buildAttachmentEvent: function (gr, action) {
        var record = {};
        var fields = NowbridgeWebhook.ATTACHMENT_FIELDS;
        for (var i = 0; i < fields.length; i++) {
            var f = fields[i];
            if (!gr.isValidField(f)) {
                if (f !== 'hash') {
                    gs.warn('nowbridge: sys_attachment has no field ' + f + '; it is not sent');
                }
                continue;
            }
            record[f] = this._str(gr.getValue(f));
        }
        var event = {};
        var instance = this._str(gs.getProperty('instance_name', ''));
        if (instance !== '') {
            event.instance = instance;
        }
        event.table = NowbridgeWebhook.ATTACHMENT_TABLE;
        event.sys_id = this._str(gr.getUniqueValue());
        event.action = action;
        event.sys_mod_count = this._str(gr.getValue('sys_mod_count'));
        event.sys_updated_on = this._str(gr.getValue('sys_updated_on'));
        var by = this._str(gr.getValue('sys_updated_by'));
        if (by !== '') {
            event.sys_updated_by = by;
        }
        event.record = record;
        return event;
    },

    encode: function (event) {
        var json = JSON.stringify(event);
        if (this._prop('ascii_json', 'false') !== 'true') {
            return json;
        }
        // JSON.stringify writes non-ASCII characters only inside strings, where \uXXXX is the same character.
        return json.replace(/[\u0080-\uffff]/g, function (c) {
            return '\\u' + ('000' + c.charCodeAt(0).toString(16)).slice(-4);
        });
    },

    // The webhook-id, also the bridge's Nats-Msg-Id: <table>:<sys_id>:<sys_mod_count>:<action>.
    webhookId: function (event) {
        return event.table + ':' + event.sys_id + ':' + event.sys_mod_count + ':' + event.action;
    },

    // One "v1,<base64 HMAC-SHA256>" entry over "<id>.<timestamp>.<body>"; keyBase64 is the secret
    // after its whsec_ prefix, which is the form generateMac takes.
    signature: function (keyBase64, id, ts, body) {
        var mac = new GlideCertificateEncryption().generateMac(keyBase64, 'HmacSHA256', id + '.' + ts + '.' + body);
        return 'v1,' + this._str(mac);
    },

    // _request builds the signed POST of body to url: one signature per key, the Standard Webhooks
    // headers, and the UTF-8 content type (the body and what generateMac signs must be the same bytes).
    _request: function (url, keys, id, body) {
        var ts = String(Math.floor(new GlideDateTime().getNumericValue() / 1000));
        var sigs = [];
        for (var i = 0; i < keys.length; i++) {
            sigs.push(this.signature(keys[i], id, ts, body));
        }
        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint(url);
        request.setHttpMethod('post');
        request.setHttpTimeout(this._int('http_timeout_ms', 10000));
        request.setRequestHeader('Content-Type', NowbridgeWebhook.CONTENT_TYPE);
        request.setRequestHeader('Accept', 'application/json');
        request.setRequestHeader('webhook-id', id);
        request.setRequestHeader('webhook-timestamp', ts);
        request.setRequestHeader('webhook-signature', sigs.join(' '));
        request.setRequestBody(body);
        return request;
    },

    _logOutcome: function (response, id, url) {
        var status = parseInt(this._str(response.getStatusCode()), 10) || 0;
        if (!response.haveError() && status >= 200 && status < 300) {
            return;
        }
        var detail = response.haveError() ? this._str(response.getErrorMessage()) : this._str(response.getBody());
        if (detail.length > 300) {
            detail = detail.substring(0, 300) + '...';
        }
        var msg = 'nowbridge: webhook ' + id + ' to ' + url + ' failed: HTTP ' + status + ' (' +
            this._hint(status) + ') ' + detail;
        if (status === 429 || status === 503) {
            gs.warn(msg); // transient: the bridge's reconcile picks the change up
        } else {
            gs.error(msg);
        }
    },

    _hint: function (status) {
        switch (status) {
        case 0:
            return 'no response: the bridge is unreachable or slower than nowbridge.http_timeout_ms';
        case 401:
            return 'signature or clock rejected: nowbridge.webhook_secret must be one of BRIDGE_WEBHOOK_SECRETS ' +
                'and the instance clock within 5 minutes of the bridge';
        case 413:
            return 'body too large for the bridge (BRIDGE_MAX_BODY_BYTES)';
        case 422:
            return 'the bridge does not sync this table (BRIDGE_TABLES) or a field is invalid';
        case 429:
        case 503:
            return 'the bridge could not store it now; reconcile will pick the change up';
        }
        return 'unexpected answer from the bridge';
    },

    _keys: function () {
        var entries = this._keyEntries();
        var keys = [];
        for (var i = 0; i < entries.length; i++) {
            keys.push(entries[i].key);
        }
        return keys;
    },

    // _keyEntries parses nowbridge.webhook_secret: each comma-separated whsec_<base64> (or bare
    // base64) value as {key: base64, prefixed: had whsec_}.
    _keyEntries: function () {
        var raw = this._prop('webhook_secret', '');
        var parts = raw.split(',');
        var entries = [];
        for (var i = 0; i < parts.length; i++) {
            var s = parts[i].replace(/^\s+|\s+$/g, '');
            var prefixed = s.indexOf('whsec_') === 0;
            if (prefixed) {
                s = s.substring(6);
            }
            if (s !== '' && /^[A-Za-z0-9+\/]+=*$/.test(s)) {
                entries.push({ key: s, prefixed: prefixed });
            }
        }
        return entries;
    },

    _fields: function (table) {
        var list = this._prop('fields.' + table, '');
        if (list === '') {
            list = NowbridgeWebhook.DEFAULT_FIELDS[table] || '';
        }
        return this._list(list);
    },

    // _list splits a comma-separated property value: trimmed, without empty or repeated entries.
    _list: function (list) {
        var out = [];
        var seen = {};
        var parts = list.split(',');
        for (var i = 0; i < parts.length; i++) {
            var f = parts[i].replace(/^\s+|\s+$/g, '');
            if (f !== '' && !seen[f]) {
                seen[f] = true;
                out.push(f);
            }
        }
        return out;
    },

    _isJournal: function (el) {
        var ed = el.getED();
        if (!ed) {
            return false;
        }
        return this._str(ed.getInternalType()).indexOf('journal') === 0;
    },

    _prop: function (name, def) {
        var v = gs.getProperty(NowbridgeWebhook.PROPERTY_PREFIX + name, def);
        return v === null || v === undefined ? def : this._str(v);
    },

    _int: function (name, def) {
        var n = parseInt(this._prop(name, String(def)), 10);
        return isNaN(n) || n < 0 ? def : n;
    },

    // _str turns a Java string, a GlideElement or null into a JavaScript string; JSON.stringify
    // must only ever see JavaScript strings.
    _str: function (v) {
        return v === null || v === undefined ? '' : '' + v;
    },

    _errText: function (e) {
        if (e && typeof e.getMessage === 'function') {
            return this._str(e.getMessage());
        }
        return this._str(e && e.message ? e.message : e);
    },

    type: 'NowbridgeWebhook'
};
