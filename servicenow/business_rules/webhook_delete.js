/*
 * nowbridge webhook (delete): business rule, When = after, Delete, one per synced table.
 * Condition: new global.NowbridgeWebhook().shouldSend(current)
 * Scope: the table's (global for the ITSM tables; Human Resources: Core for sn_hr_core_case, created by
 * hand: a rule in another scope than its table may not be an after rule with a script).
 *
 * A delete cannot be async: by the time a worker would run it the record is gone and there is
 * nothing to load as current. In an after-delete rule current still holds the last values, which
 * are sent as the record; the request itself goes out through executeAsync().
 */
(function executeRule(current, previous /*null when async*/) {
    new global.NowbridgeWebhook().send(current, 'delete');
})(current, previous);
