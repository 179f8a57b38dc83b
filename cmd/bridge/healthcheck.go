package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nowbridge/nowbridge/internal/config"
)

func newHealthcheckCmd(a *app) *cobra.Command {
	var (
		target  string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "healthcheck [--url URL]",
		Short: "Exit 0 when the local bridge answers /readyz with 200, else 1 (a container HEALTHCHECK: distroless has no curl)",
		Long: `healthcheck GETs /readyz of the bridge at BRIDGE_LISTEN (a host of "", 0.0.0.0 or ::
means 127.0.0.1), or the URL given with --url, and exits 0 on 200, 1 on anything else
(another status, no answer within --timeout, nothing listening), saying why on stderr.
It reads the same flags, environment and --config file as bridge serve for the address,
so in a container it needs no arguments.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if timeout <= 0 {
				return usageError{fmt.Errorf("--timeout must be positive, got %s", timeout)}
			}
			if target == "" {
				cfg, err := config.Load(cmd.Flags(), a.getenv)
				if err != nil {
					return err
				}
				target = readyzURL(cfg.Listen)
			} else if u, err := url.Parse(target); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return usageError{fmt.Errorf("--url %q: want an http(s) URL such as http://127.0.0.1:8080/readyz", target)}
			}
			status, err := probe(cmd.Context(), target, timeout)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: %s\n", target, status)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&target, "url", "", "URL to GET (default: http://<BRIDGE_LISTEN>/readyz)")
	fs.DurationVar(&timeout, "timeout", 3*time.Second, "give up after this long")
	all := pflag.NewFlagSet("all", pflag.ContinueOnError)
	config.BindFlags(all)
	fs.AddFlag(all.Lookup("config"))
	fs.AddFlag(all.Lookup("listen"))
	return cmd
}

// readyzURL is the /readyz URL of a receiver listening on listen: a
// wildcard or empty host is reached on the loopback address.
func readyzURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil { // config.Load has checked it; keep the text for the error
		return "http://" + listen + "/readyz"
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/readyz"
}

// probe GETs target once, without a proxy, and returns its status line
// when it is 200; otherwise an error with the status and the start of the
// body (/readyz says there what is not ready; it holds no secret).
func probe(ctx context.Context, target string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", usageError{fmt.Errorf("--url %q: %w", target, err)}
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return "", fmt.Errorf("healthcheck %s: no answer within %s: the bridge is stuck or overloaded; see its log", target, timeout)
		}
		return "", fmt.Errorf("healthcheck %s: %w (is bridge serve running and listening there? set BRIDGE_LISTEN or --url)", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		detail := strings.Join(strings.Fields(string(body)), " ")
		return "", fmt.Errorf("healthcheck %s: %s %s", target, resp.Status, detail)
	}
	return resp.Status, nil
}
