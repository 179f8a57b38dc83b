'use strict';
// A small shim of the Glide APIs the shipped business rules use, for the contract test
// (servicenow/contract_test.go). It follows ServiceNow's documented behaviour where it matters to the
// scripts: getValue returns null for an empty field, journal fields read as "" through getValue and
// their newest entry through getJournalEntry(1), generateMac takes a base64 key and returns a base64
// HMAC, and RESTMessageV2 only records the request it would send.
const crypto = require('node:crypto');

// newGlobals returns the globals of one business-rule run and the log of what it did.
function newGlobals(sc) {
  const out = { requests: [], logs: [] };
  const props = sc.properties || {};
  const rec = sc.record;
  const journalFields = new Set(rec.journal_fields || []);
  const changed = new Set(rec.changed || []);
  const values = rec.values || {};
  const journal = rec.journal || {};

  const gs = {
    getProperty(name, def) {
      if (Object.prototype.hasOwnProperty.call(props, name)) return props[name];
      return def === undefined ? null : def;
    },
    getUserName() { return sc.user || 'system'; },
    getUserID() { return '6816f79cc0a8016401c5a33be04be441'; },
    info(msg) { out.logs.push({ level: 'info', msg: String(msg) }); },
    warn(msg) { out.logs.push({ level: 'warn', msg: String(msg) }); },
    error(msg) { out.logs.push({ level: 'error', msg: String(msg) }); },
    nil(v) { return v === null || v === undefined || v === ''; },
  };

  function element(name) {
    return {
      changes() { return changed.has(name); },
      getJournalEntry(n) {
        if (n !== 1) throw new Error('shim: only getJournalEntry(1) is emulated');
        return journal[name] || '';
      },
      getED() {
        return { getInternalType() { return journalFields.has(name) ? 'journal_input' : 'string'; } };
      },
      toString() { return journalFields.has(name) ? '' : (values[name] || ''); },
    };
  }

  const current = {
    getTableName() { return rec.table; },
    getUniqueValue() { return values.sys_id; },
    operation() { return rec.operation; },
    isValidField(name) {
      return Object.prototype.hasOwnProperty.call(values, name) || journalFields.has(name);
    },
    getElement(name) { return current.isValidField(name) ? element(name) : null; },
    getValue(name) {
      if (journalFields.has(name)) return null; // raw journal reads are empty
      const v = values[name];
      return v === undefined || v === '' ? null : v; // GlideRecord.getValue gives null for empty
    },
    changes() { return rec.any_change !== undefined ? rec.any_change : changed.size > 0; },
  };

  function GlideDateTime() {}
  GlideDateTime.prototype.getNumericValue = function () { return sc.now_ms; };

  function GlideCertificateEncryption() {}
  GlideCertificateEncryption.prototype.generateMac = function (keyBase64, algorithm, data) {
    if (algorithm !== 'HmacSHA256') throw new Error('shim: unsupported algorithm ' + algorithm);
    if (typeof data !== 'string') throw new Error('shim: generateMac data must be a string');
    return crypto.createHmac('sha256', Buffer.from(keyBase64, 'base64')).update(data, 'utf8').digest('base64');
  };

  function RESTMessageV2() {
    this.req = { endpoint: '', method: '', headers: {}, body: '', timeout_ms: 0, mode: '', waited_s: 0 };
  }
  RESTMessageV2.prototype.setEndpoint = function (u) { this.req.endpoint = String(u); };
  RESTMessageV2.prototype.setHttpMethod = function (m) { this.req.method = String(m); };
  RESTMessageV2.prototype.setRequestHeader = function (k, v) { this.req.headers[String(k)] = String(v); };
  RESTMessageV2.prototype.setRequestBody = function (b) {
    if (typeof b !== 'string') throw new Error('shim: setRequestBody takes a string');
    this.req.body = b;
  };
  RESTMessageV2.prototype.setHttpTimeout = function (ms) { this.req.timeout_ms = ms; };
  RESTMessageV2.prototype._run = function (mode) {
    this.req.mode = mode;
    const resp = sc.response || { status: 202, body: '{"accepted":1,"duplicates":0,"echoes":0}' };
    if (resp.throw) throw new Error(resp.throw);
    out.requests.push(this.req);
    const req = this.req;
    return {
      waitForResponse(s) { req.waited_s = s; },
      getStatusCode() { return resp.status; },
      getBody() { return resp.body || ''; },
      haveError() { return !!resp.error || resp.status === 0; },
      getErrorMessage() { return resp.error || ''; },
    };
  };
  RESTMessageV2.prototype.execute = function () { return this._run('sync'); };
  RESTMessageV2.prototype.executeAsync = function () { return this._run('async'); };

  const Class = {
    create() {
      return function () { this.initialize.apply(this, arguments); };
    },
  };

  return {
    out,
    globals: {
      gs, current, previous: null, GlideDateTime, GlideCertificateEncryption,
      sn_ws: { RESTMessageV2 }, Class,
    },
  };
}

module.exports = { newGlobals };
