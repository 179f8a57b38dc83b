package doctor

// Fixes. Tests and docs match on them.
const (
	FixToken = "check BRIDGE_SN_CLIENT_ID/BRIDGE_SN_CLIENT_SECRET against the OAuth application (Application Registry; " +
		"Zurich and later: Machine Identity Console > Inbound integrations), set the system property " +
		"glide.oauth.inbound.client.credential.grant_type.enabled = true, and set the OAuth Application User " +
		"on the application: ServiceNow answers the same 401 access_denied for all three"
	FixAppUser = "the token is issued but every API call answers 401: set the OAuth Application User on the OAuth " +
		"application (add the field to the form if it is not shown), and make sure that user is active, not locked out"
	FixRoles = "grant the OAuth Application User snc_platform_rest_api_access and itil (incident, problem, change, requested items); " +
		"sn_hr_core.case_writer only for HR cases; nothing more"
	FixNoRole = "every counted row is hidden: the OAuth Application User has no role that may read the table (ServiceNow " +
		"answers 200 with no rows, not 403): " + FixRoles
	FixCloseCode = "set BRIDGE_CLOSE_CODE to one of the instance's active choices, or leave it empty so the bridge picks one " +
		"(Solution provided first); a value that is not an active choice is dropped silently and the data policy refuses the resolve"
	FixChoices = "the OAuth Application User cannot read sys_choice (itil can): grant itil, or set BRIDGE_CLOSE_CODE to a " +
		"code you know is active"
	FixAuditDelete = "optional: grant the OAuth Application User read on sys_audit_delete (a read ACL for a role of its own) " +
		"for a fast delete scan; without it reconcile finds deletes by presence every BRIDGE_DELETE_SCAN_INTERVAL (24h)"
	FixScanQuery = "reconcile's keyset query (ORDERBYsys_updated_on^ORDERBYsys_id) was refused: a field ACL hides " +
		"sys_updated_on, sys_id or sys_mod_count from the OAuth Application User; grant read on them"
	FixEmpty = "no row is visible: either the table is empty (create one record and run the doctor again) or the " +
		"OAuth Application User cannot read it (ServiceNow answers an empty list, not 403): " + FixRoles
	FixRowACL = "X-Total-Count counts rows the user cannot see: row-level ACLs (or a query business rule) hide them " +
		"from the OAuth Application User; grant the role the table's read ACL requires"
	FixTable     = "the table does not exist on this instance, or the user cannot see it: check BRIDGE_TABLES"
	FixFieldName = "the field does not exist on this table: fix the name in the mapping (BRIDGE_MAPPING_DIR), or create " +
		"the field (a u_ field is a custom column that must exist on this instance)"
	FixFieldACL = "a field-level read ACL (table.field) hides these fields from the OAuth Application User: grant " +
		"the role it requires; ServiceNow omits unreadable fields without an error"
	FixFieldEither = "a field missing from the answer either does not exist (fix the mapping or create the field, e.g. " +
		"a u_ field) or a field ACL hides it (grant the role it requires); grant read on sys_dictionary to tell which"
	FixWrite = "the OAuth Application User cannot write this table: grant itil (create/write on incident); a data " +
		"policy or a mandatory field can also refuse a write (see the detail)"
	FixClock = "synchronise the clocks (NTP) of the bridge host; the instance's clock is ServiceNow's. Webhooks " +
		"signed more than BRIDGE_WEBHOOK_TOLERANCE (default 5m) away from the bridge's clock are rejected"
	FixRateLimited = "a rate limit rule (System Web Services > REST > Rate Limit Rules, sys_rate_limit_rules) is " +
		"exhausted for this user: raise it, or set BRIDGE_SN_RATE_LIMIT below the rule's hourly count / 3600"
	FixWebhookSecret = "set BRIDGE_WEBHOOK_SECRETS (whsec_<base64>, the first signs, all verify) and put the same " +
		"value in ServiceNow's system property nowbridge.webhook_secret"
	FixWebhookUnreachable = "start the bridge (bridge serve) or fix --webhook-url; ServiceNow must reach the same URL " +
		"(its nowbridge.webhook_url property): open the firewall for the instance's outbound addresses"
	FixWebhookMismatch = "the receiver rejects our signature: the secrets given to the doctor are not the ones the " +
		"bridge at this URL uses, or the clocks differ by more than its tolerance; give both the same " +
		"BRIDGE_WEBHOOK_SECRETS and put one of them in nowbridge.webhook_secret"
	FixWebhookPath = "this URL is not the bridge's receiver: it must end in /webhooks/servicenow"
	FixWebhookOpen = "the endpoint accepted an unsigned request: this is not the nowbridge receiver (or a proxy " +
		"answers for it); point --webhook-url and nowbridge.webhook_url at the bridge"
)
