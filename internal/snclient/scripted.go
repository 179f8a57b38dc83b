package snclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// ScriptedResponse is a successful answer of a Scripted REST API resource.
type ScriptedResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// CallScripted sends one request to a resource outside the Table API, such
// as a Scripted REST API's (/api/<namespace>/<api_id>/<path>), with the
// client's OAuth token, rate limit, breaker and retries; a POST is retried
// only when it surely did not reach the instance. body, when not nil, is
// sent as JSON. An answer of 400 or more is an *APIError carrying
// ServiceNow's message and detail, its Table field holding the path.
func (c *Client) CallScripted(ctx context.Context, method, path string, body []byte) (*ScriptedResponse, error) {
	if !strings.HasPrefix(path, "/api/") || strings.HasPrefix(path, "/api/now/table/") || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("scripted REST path %q: want /api/<namespace>/<api>/<resource> without a query", path)
	}
	resp, err := c.do(ctx, &call{method: method, table: path, path: path, body: body})
	if err != nil {
		var ae *APIError
		if errors.As(err, &ae) && ae.Hint != HintAppUser && (ae.Status == 400 || ae.Status == 403 || ae.Status == 404) {
			ae.Hint = "" // the Table API's hints (roles for incident, fields) do not apply to a scripted resource
		}
		return nil, err
	}
	return &ScriptedResponse{Status: resp.status, Header: resp.header, Body: resp.body}, nil
}
