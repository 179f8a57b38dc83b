'use strict';
// Runs the shipped business-rule scripts against glide_shim.js. Usage:
//   node run.js <business_rules dir> [<rest_api dir>] < scenarios.json > results.json
// Each scenario loads the Script Include and the named rule into a fresh vm context, evaluates the
// rule's condition, runs the rule when it is true, and reports the requests and log lines. A scenario
// naming a resource instead runs that Scripted REST resource script and reports what it answered.
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const { newGlobals } = require('./glide_shim.js');

const dir = process.argv[2];
const restDir = process.argv[3] || path.join(dir, '..', 'rest_api');
const include = fs.readFileSync(path.join(dir, 'NowbridgeWebhook.js'), 'utf8');
const scenarios = JSON.parse(fs.readFileSync(0, 'utf8'));

const results = scenarios.map((sc) => {
  const { out, globals } = newGlobals(sc);
  const ctx = vm.createContext(globals);
  const res = { name: sc.name, condition: false, requests: out.requests, logs: out.logs, error: '' };
  try {
    vm.runInContext(include, ctx, { filename: 'NowbridgeWebhook.js' });
    if (sc.resource) {
      const script = fs.readFileSync(path.join(restDir, sc.resource), 'utf8');
      vm.runInContext(script, ctx, { filename: sc.resource });
      res.rest = out.rest;
      return res;
    }
    res.condition = vm.runInContext(sc.condition, ctx, { filename: 'condition' }) === true;
    if (res.condition) {
      const rule = fs.readFileSync(path.join(dir, sc.rule), 'utf8');
      vm.runInContext(rule, ctx, { filename: sc.rule });
    }
  } catch (e) {
    res.error = String(e && e.stack ? e.stack : e);
  }
  return res;
});

// The transport is JSON; a lone surrogate in a body would not survive it, so \u-escape everything
// non-ASCII: the Go side gets the exact UTF-16 string back.
process.stdout.write(JSON.stringify(results).replace(/[\u007f-\uffff]/g,
  (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0')));
