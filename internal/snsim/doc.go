// Package snsim simulates a ServiceNow instance over HTTP (OAuth client
// credentials, the Table API, encoded queries, ACLs, rate limits, faults and
// business-rule webhooks) faithful to the shared ServiceNow facts, so the bridge
// is tested against ServiceNow's quirks without an instance.
// Tests drive it through Go methods; `bridge sim` serves it alone.
//
// # Using it
//
//	sim := snsim.New(snsim.Config{ClientID: "id", ClientSecret: "secret"})
//	defer sim.Close()                 // stops the business-rule workers
//	srv := httptest.NewServer(sim)    // *Server is an http.Handler
//	defer srv.Close()
//	sim.Seed(20000)                   // incidents, ~50 per sys_updated_on second
//	sim.SeedTable("change_request", 500, snsim.SeedOptions{})
//
// Reference links use the request's Host, so records point back at srv.URL.
//
// # Endpoints
//
//   - POST /oauth_token.do: form-encoded grant_type=client_credentials with
//     client_id and client_secret in the body. Every failure is 401
//     {"error_description":"access_denied","error":"server_error"}.
//   - /api/now/table/{table}[/{sys_id}], /api/now/v1/table/..., /api/now/v2/table/...:
//     GET list and one, POST (201 + Location), PUT/PATCH (200, fields sent
//     only), DELETE (204). Ticket tables (TicketTables, each with task's
//     fields): incident, change_request, problem, sc_req_item,
//     sn_hr_core_case. System tables, read-only through the API: sys_user,
//     sys_user_group, sys_journal_field, sys_choice, sys_audit_delete,
//     sys_dictionary.
//
// List parameters: sysparm_query, sysparm_fields, sysparm_limit (default
// 10000), sysparm_offset, sysparm_display_value (false/true/all),
// sysparm_exclude_reference_link, sysparm_no_count,
// sysparm_suppress_pagination_header. X-Total-Count and Link follow recorded
// responses (comma without space, page 1's prev at a negative offset, no
// next on the last page, last = total - limit). v1 answers a query without
// matches 404 No Record found, v2 200 []; the unversioned path is the
// latest version (v2). Reference links and Location carry the request's
// version (a v2 request links to /api/now/v2/table/...).
//
// Errors use the envelope {"error":{"message","detail"},"status":"failure"},
// detail null where the platform sends no detail (400 Invalid table X).
// Every 401 carries WWW-Authenticate: BASIC realm="Service-now".
//
// # Encoded queries
//
// ^ (AND), ^OR (binds to the previous clause: a^ORb^c = (a OR b) AND c),
// ^NQ, ORDERBY/ORDERBYDESC (several, in order), ^EQ, ^^ for a literal ^,
// operators = != > >= < <= IN NOT IN LIKE NOT LIKE STARTSWITH ENDSWITH
// ISEMPTY ISNOTEMPTY BETWEEN ANYTHING, and javascript:gs.dateGenerate(d,t)
// values. Text compares case-insensitively (= IN LIKE ...); integer fields
// compare as numbers; empty values never satisfy > < BETWEEN. A clause on a
// field the table lacks is dropped (default) or makes the query return no
// rows (SetInvalidQueryReturnsNoRows), and is recorded in QueryProblems.
// Syntax the simulator does not implement (dot-walks, INSTANCEOF, other
// javascript:, GROUPBY, ...) is answered with 400 "snsim: unsupported
// encoded query syntax", logged at error level and recorded: a test never
// passes on a misread query.
//
// Lists walk the (sys_updated_on, sys_id) index: keyset queries
// (sys_updated_on>T, sys_updated_on=T^sys_id>ID, with ORDERBYs) are binary
// searches (their X-Total-Count too, ^NQ unions included), while
// sysparm_offset walks and tests every skipped row and adds OffsetRowCost
// (default 100ns) per skipped row, so deep offsets cost more, as on the
// platform. Other orders sort the matches.
//
// # Behaviour
//
// Every value is a JSON string; references are {"link","value"} (plain with
// sysparm_exclude_reference_link). System fields (sys_*) sent by a client are
// ignored; sys_mod_count grows by one per update that changes something;
// sys_updated_on is UTC at one-second resolution; sys_updated_by is the
// writer's user name (Config.AppUser for API writes). Each ticket table has
// one definition (tickets.go; facts and sources in
// docs/servicenow-tables.md) from which its schema, sys_choice rows,
// dictionary rows and write rules come: numbers with its prefix (INC, CHG,
// PRB, RITM, HRC; 0010001...), its state list and insert defaults,
// priority computed from impact and urgency where the platform computes it
// (incident, problem: a sent priority is overwritten), a mirror of state
// (incident_state, problem_state), active "false" in its closed states,
// resolved_at/closed_at stamps, and its data policy. comments/work_notes
// append sys_journal_field rows (raw reads give "", display values give the
// entries newest first). A delete writes a sys_audit_delete row (tablename,
// documentkey, payload).
//
// Choice fields take their labels from sys_choice rows (name, element,
// value, label, sequence, inactive, language; incident's rows are filed
// under incident). incident.close_code offers the current release's codes
// (Solution provided, Duplicate, ...; CurrentCloseCodes), or the older
// release's (Solved (Permanently), ...; Config.LegacyCloseCodes). A
// close_code that is not an active choice is dropped silently and the rest
// of the write proceeds; then the data policy refuses a write that leaves
// an incident in state 6 or 7 without close_code or close_notes: 403
// Operation Failed, detail "Data Policy Exception: \n\tThe following
// fields are mandatory: Resolution code, Resolution notes" (naming only the
// missing ones). change_request: closing (3) needs close_code (successful,
// successful_issues, unsuccessful) and close_notes. problem: resolving or
// closing (106, 107) needs resolution_code, then by code cause_notes and
// fix_notes (fix_applied), cause_notes and close_notes (risk_accepted),
// close_notes (canceled) or duplicate_of (duplicate). sc_req_item and
// sn_hr_core_case have no close policy. Direct test writes follow the same
// rules; Seed and SeedTable (imports) write records that satisfy them.
//
// # Knobs (all safe while requests run)
//
//   - SetOAuthMode(OAuthOK | OAuthGrantDisabled | OAuthNoAppUser |
//     OAuthTokenNotAuthenticated), SetTokenTTL, RevokeTokens,
//     TokenRequests, TokensIssued.
//   - Least privilege by default: the OAuth application user has what
//     snc_platform_rest_api_access + itil give. sys_dictionary,
//     sys_audit_delete and sn_hr_core_case (with its journal entries)
//     answer 200 with no rows while X-Total-Count counts them (Link pages
//     through them), a single read 404, writes 403.
//     SetGrants(Grants{Dictionary, AuditDelete, HRRole}) or Config.Grants
//     grant them as an admin would; HRRole sn_hr_core.case_reader reads HR
//     cases, case_writer or admin also writes them.
//   - SetChoices(table, element, []Choice), SetChoiceInactive, Choices:
//     edit a choice list as an admin would; sys_choice rows follow.
//   - SetACL(ACL{NoRoles, DenyWrites, HideRow, HiddenFields}). NoRoles takes
//     itil away: incident and its journal entries are hidden the same way,
//     writes 403. HideRow runs after sysparm_limit (short or empty pages
//     while more follow; X-Total-Count counts hidden rows; journal entries
//     of hidden records are hidden); HideFraction(f) builds one.
//   - SetInvalidQueryReturnsNoRows, QueryProblems, SetOffsetRowCost.
//   - SetRateLimitRules([]RateLimitRule) (per hour per user/role/everyone,
//     most specific wins), SetUserRoles, SetBurstLimit(perSecond): 429 "Rate
//     limit exceeded" with Retry-After, X-RateLimit-Limit, X-RateLimit-Reset,
//     X-RateLimit-Rule; the last three also come on every other response a
//     rule (or the burst limit) matches. SetRateLimitWindow(d) makes the
//     rules count per window of d instead of per hour, for tests.
//   - SetFaults(Faults{Latency, LatencyJitter, ErrorRate, CancelRate,
//     DropRate, SemaphoreRate, TokenErrorRate}); SemaphoreRate answers 429
//     without rate-limit headers or Retry-After (API semaphores exhausted);
//     rates draw from Config.Seed's generator.
//   - Business rules: SetWebhooks(targets...), SetWebhookOptions(
//     WebhookOptions{DropRate, Delay, BeforeResponse, SkipUser, Fields}),
//     WaitWebhooks(ctx), WebhookStats. After each insert/update/delete (API
//     or direct call, unless written without workflow) of a table Fields
//     lists (default: every shipped table with its default field list, as
//     an instance whose nowbridge.tables lists them all) the SPEC §2 event
//     is encoded by events.EncodeWebhookBody, signed with every target
//     secret and POSTed asynchronously, in order per record, never retried.
//   - RequestCount(method, path, status), RequestStats, Requests, ResetStats.
//
// # Attachments
//
// The Attachment API (facts and their sources: docs/servicenow-attachments.md):
// /api/now/attachment (and /api/now/v1/attachment) GET list
// (sysparm_query on sys_attachment, sysparm_limit default 1000,
// sysparm_offset; X-Total-Count and Link as on the Table API), GET
// /{sys_id} metadata, GET /{sys_id}/file the bytes (the file's
// Content-Type, X-Attachment-Metadata as JSON without download_link,
// Content-Disposition; 406 when Accept admits neither the type nor */*),
// POST /file?table_name=&table_sys_id=&file_name= with the raw body
// (Content-Type mandatory; 201 + Location; the answer shows the record as
// first written, state pending and sys_mod_count 0, later reads show it
// available, 1, updated by system), DELETE /{sys_id} (204). Every metadata
// value is a string: size_bytes, hash (SHA-256 hex of the bytes),
// chunk_size_bytes, compressed, ... in the recorded order. An upload over
// com.glide.attachment.max_size (SetAttachmentMaxSize, default 1024 MB) is
// refused with 400 and a message naming the limit (the platform's wire form
// is undocumented). Metadata rows live in the sys_attachment table, which
// the Table API reads too. Least privilege: an attachment is readable
// where its record is (hidden otherwise: 404, lists count it but leave it
// out), and added or deleted where the record is also writable (else 403);
// an attachment of a record the simulator does not know is hidden. Auth,
// faults and rate limits apply as to the Table API; rules name the
// resource "GET /now/attachment" (one resource for every path). Deleting a
// record drops its attachments. The business rule "nowbridge webhook
// (attachment)" runs after insert and after delete on sys_attachment for
// attachments of a synced table (one WebhookOptions.Fields lists): an
// SNEvent of table sys_attachment whose record holds content_type,
// file_name, hash, size_bytes, table_name, table_sys_id
// (AttachmentWebhookFields), signed and sent like the other rules (skip
// user, drop rate and delay apply).
// Test API: AddAttachment, AddAttachmentAs (as a person: the rule runs),
// RemoveAttachment, Attachments, Attachment, AttachmentBytes,
// CorruptAttachment, SetAttachmentMaxSize, SetAttachmentHashField(false)
// (a release without the hash field).
//
// # Direct test API
//
// Insert, Update, Delete (as a named user, business rules run),
// InsertNoWorkflow, UpdateNoWorkflow, DeleteNoWorkflow (setWorkflow(false)),
// Get, Count, IDs, Journal, JournalDisplay, SetUpdatedOn (a late commit),
// Seed, SeedWith, SeedTable.
package snsim
