/*
 * nowbridge webhook (insert/update): business rule, When = after, Insert + Update, one per synced table.
 * Condition: new global.NowbridgeWebhook().shouldSend(current)
 * Scope: the table's (global for the ITSM tables; Human Resources: Core for sn_hr_core_case, created by
 * hand: a rule in another scope than its table may not be an after rule with a script).
 *
 * "after", not "async": an async rule reloads the record when a scheduler worker gets to it, so it
 * has no previous, changes() is false and a later update may already be visible (a wrong
 * sys_mod_count, a lost `changed`, the wrong journal entry). This rule only builds and signs the
 * event in memory; the HTTP call leaves through RESTMessageV2.executeAsync(), so the form save does
 * not wait for the bridge either way.
 */
(function executeRule(current, previous /*null when async*/) {
    new global.NowbridgeWebhook().send(current, String(current.operation()));
})(current, previous);
