/*
 * nowbridge self-test: Scripted REST API "nowbridge" (API ID nowbridge), resource POST /selftest.
 * Base path /api/<namespace>/nowbridge: the namespace is this instance's company code in global scope
 * (System Web Services > Scripted REST APIs > nowbridge shows it); bridge doctor finds it or takes
 * BRIDGE_SN_SELFTEST_PATH.
 *
 * Requires authentication and the role nowbridge_integration (the resource's ACL). Sends a signed test
 * event to nowbridge.webhook_url through NowbridgeWebhook.selfTest() — the Script Include, property and
 * signing code the business rules use — and answers 200 with what happened as {"result": {...}}:
 * result.ok is the verdict; stage, status, result, detail and error say why (see selfTest()).
 */
(function process(/*RESTAPIRequest*/ request, /*RESTAPIResponse*/ response) {
    var outcome = new NowbridgeWebhook().selfTest();
    response.setStatus(200);
    response.setContentType('application/json');
    response.setBody(outcome);
})(request, response);
