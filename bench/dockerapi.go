package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/imdsguard/imdsguard/status"
)

// unixClient is an HTTP client over one unix socket: the Docker API and the
// agent's status socket are files, reachable without entering the sandbox
// namespace.
func unixClient(path string, timeout time.Duration) *http.Client {
	path = strings.TrimPrefix(path, "unix://")
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		},
	}
}

type dockerAPI struct{ c *http.Client }

func newDockerAPI(host string) *dockerAPI { return &dockerAPI{unixClient(host, 30*time.Second)} }

func (d *dockerAPI) do(method, path string, body any) ([]byte, int, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, 0, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://docker"+path, r)
	if err != nil {
		return nil, 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.c.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

func (d *dockerAPI) ping() bool {
	_, code, err := d.do("GET", "/_ping", nil)
	return err == nil && code == 200
}

// run creates and starts a busybox container with cmd.
func (d *dockerAPI) run(image string, cmd []string, autoRemove bool, labels map[string]string) (string, error) {
	b, code, err := d.do("POST", "/containers/create", map[string]any{
		"Image": image, "Cmd": cmd, "Labels": labels,
		// Init: busybox sleep as pid 1 ignores SIGTERM and stalls every stop.
		"HostConfig": map[string]any{"AutoRemove": autoRemove, "Init": true},
	})
	if err != nil {
		return "", err
	}
	if code != 201 {
		return "", fmt.Errorf("create: %d %s", code, bytes.TrimSpace(b))
	}
	var res struct{ Id string }
	if err := json.Unmarshal(b, &res); err != nil {
		return "", err
	}
	b, code, err = d.do("POST", "/containers/"+res.Id+"/start", nil)
	if err != nil {
		return res.Id, err
	}
	if code != 204 && code != 304 {
		return res.Id, fmt.Errorf("start: %d %s", code, bytes.TrimSpace(b))
	}
	return res.Id, nil
}

func (d *dockerAPI) running() (int, error) {
	b, code, err := d.do("GET", "/containers/json", nil)
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("list: %d", code)
	}
	var l []json.RawMessage
	err = json.Unmarshal(b, &l)
	return len(l), err
}

// statusClient reads the agent's /status over its unix socket.
type statusClient struct{ c *http.Client }

func newStatusClient(sock string) *statusClient {
	return &statusClient{unixClient(sock, 5*time.Second)}
}

// profile takes a CPU profile of the agent over d (Go's pprof format).
func (s *statusClient) profile(d time.Duration) ([]byte, error) {
	c := *s.c
	c.Timeout = d + 30*time.Second
	resp, err := c.Get(fmt.Sprintf("http://imdsguard/debug/pprof/profile?seconds=%d", int(d.Seconds())))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("profile: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return b, err
}

func (s *statusClient) get() (*status.Status, error) {
	resp, err := s.c.Get("http://imdsguard/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st status.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, err
	}
	return &st, nil
}
