'use strict';
// A small shim of the Glide APIs the shipped business rules use, for the contract test
// (servicenow/contract_test.go). It follows ServiceNow's documented behaviour where it matters to the
// scripts: getValue returns null for an empty field, journal fields read as "" through getValue and
// their newest entry through getJournalEntry(1), generateMac takes a base64 key and returns a base64
// HMAC, and RESTMessageV2 only records the request it would send. For the Scripted REST resource it
// provides request/response objects that record what the resource answers.
//
// Knobs emulate what is undocumented on a real instance: mac_charset makes generateMac sign the text
// in another charset, the way Java's String.getBytes(charset) encodes it ('?' for what the charset
// cannot hold); the default is UTF-8.
const crypto = require('node:crypto');

// newGlobals returns the globals of one business-rule run and the log of what it did.
function newGlobals(sc) {
  const out = { requests: [], logs: [] };
  const props = sc.properties || {};
  const rec = sc.record || { table: '', values: {} };
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
    generateGUID() { return sc.guid || '0123456789abcdef0123456789abcdef'; },
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
    return crypto.createHmac('sha256', Buffer.from(keyBase64, 'base64')).update(javaBytes(data, sc.mac_charset)).digest('base64');
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

  // The Scripted REST resource's request and response (RESTAPIRequest, RESTAPIResponse).
  const rest = { status: 0, content_type: '', body: null };
  out.rest = rest;
  const request = { body: { data: sc.request_body || {} }, pathParams: {}, queryParams: {}, headers: {} };
  const response = {
    setStatus(n) { rest.status = n; },
    setContentType(t) { rest.content_type = String(t); },
    setBody(obj) {
      // The platform serialises the object into {"result": ...}: it must survive JSON.
      rest.body = JSON.parse(JSON.stringify(obj));
    },
  };

  const Class = {
    create() {
      return function () { this.initialize.apply(this, arguments); };
    },
  };

  const globals = {
    gs, current, previous: null, GlideDateTime, GlideCertificateEncryption,
    sn_ws: { RESTMessageV2 }, Class, request, response,
  };
  // global.X names a global-scope Script Include from any scope; the include's top-level var lands
  // on the context object, which is what global is here.
  globals.global = globals;
  return { out, globals };
}

// javaBytes encodes a string as Java's String.getBytes(charset) does.
function javaBytes(str, charset) {
  switch (charset || 'UTF-8') {
    case 'UTF-8':
      return Buffer.from(str, 'utf8');
    case 'ISO-8859-1': {
      const out = [];
      for (const ch of str) {
        const cp = ch.codePointAt(0);
        out.push(cp <= 0xff ? cp : 0x3f);
      }
      return Buffer.from(out);
    }
    case 'UTF-16': {
      const le = Buffer.from(str, 'utf16le');
      const be = Buffer.alloc(le.length + 2);
      be[0] = 0xfe;
      be[1] = 0xff;
      for (let i = 0; i < le.length; i += 2) {
        be[i + 2] = le[i + 1];
        be[i + 3] = le[i];
      }
      return be;
    }
    default:
      throw new Error('shim: unsupported mac_charset ' + charset);
  }
}

module.exports = { newGlobals };
