package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imdsguard/imdsguard/e2e/sandbox"
	"github.com/imdsguard/imdsguard/status"
)

// TestCheckECSCases runs `imdsguard check --json --host-root <tree>` over
// every way ecs-init and the ECS agent can end up reading
// ECS_AWSVPC_BLOCK_IMDS, and checks the effective value and the reason.
func TestCheckECSCases(t *testing.T) {
	s := sandbox.NewT(t, sandbox.Options{NoDockerd: true})
	const (
		etc  = "etc/ecs/ecs.config"
		vlib = "var/lib/ecs/ecs.config"
		js   = "etc/ecs/ecs.config.json"
	)
	for _, tc := range []struct {
		name   string
		files  map[string]string
		want   bool
		source string // substring of ecs_config.config.source
		reason string // substring of ecs_config.config.reason
	}{
		{"no files", nil, false, "default", "default false"},
		{"true", map[string]string{etc: "ECS_CLUSTER=c\nECS_AWSVPC_BLOCK_IMDS=true\n"}, true, "/etc/ecs/ecs.config:2", "true"},
		{"True", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=True\n"}, true, "/etc/ecs/ecs.config:1", ""},
		{"1", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=1\n"}, true, "/etc/ecs/ecs.config:1", ""},
		{"t", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=t\n"}, true, "/etc/ecs/ecs.config:1", ""},
		{"space after =", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS= true\n"}, true, "/etc/ecs/ecs.config:1", ""},
		{"whole line indented", map[string]string{etc: "   ECS_AWSVPC_BLOCK_IMDS=true   \n"}, true, "/etc/ecs/ecs.config:1", ""},
		{"CRLF", map[string]string{etc: "ECS_CLUSTER=c\r\nECS_AWSVPC_BLOCK_IMDS=true\r\n"}, true, "/etc/ecs/ecs.config:2", ""},
		{"quoted", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=\"true\"\n"}, false, "", "quote"},
		{"single-quoted", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS='true'\n"}, false, "", "quote"},
		{"yes", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=yes\n"}, false, "", "yes"},
		{"on", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=on\n"}, false, "", "on"},
		{"empty", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=\n"}, false, "", ""},
		{"spaces around =", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS = true\n"}, false, "default", ""},
		{"export", map[string]string{etc: "export ECS_AWSVPC_BLOCK_IMDS=true\n"}, false, "default", ""},
		{"commented out", map[string]string{etc: "#ECS_AWSVPC_BLOCK_IMDS=true\n"}, false, "default", ""},
		{"inline comment", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=true # block it\n"}, false, "", "true # block it"},
		{"last duplicate wins (false)", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=true\nECS_AWSVPC_BLOCK_IMDS=false\n"}, false, "/etc/ecs/ecs.config:2", ""},
		{"last duplicate wins (true)", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=false\nECS_AWSVPC_BLOCK_IMDS=true\n"}, true, "/etc/ecs/ecs.config:2", ""},
		{"last duplicate invalid", map[string]string{etc: "ECS_AWSVPC_BLOCK_IMDS=true\nECS_AWSVPC_BLOCK_IMDS=yes\n"}, false, "", "yes"},
		{"/var/lib only", map[string]string{vlib: "ECS_AWSVPC_BLOCK_IMDS=true\n"}, true, "/var/lib/ecs/ecs.config:1", ""},
		{"/etc overrides /var/lib", map[string]string{vlib: "ECS_AWSVPC_BLOCK_IMDS=true\n", etc: "ECS_AWSVPC_BLOCK_IMDS=false\n"}, false, "/etc/ecs/ecs.config:1", ""},
		{"JSON only", map[string]string{js: `{"AWSVPCBlockInstanceMetdata": true}`}, true, "/etc/ecs/ecs.config.json", ""},
		{"env beats JSON", map[string]string{js: `{"AWSVPCBlockInstanceMetdata": true}`, etc: "ECS_AWSVPC_BLOCK_IMDS=false\n"}, false, "/etc/ecs/ecs.config:1", ""},
		{"invalid env lets JSON apply", map[string]string{js: `{"AWSVPCBlockInstanceMetdata": true}`, etc: "ECS_AWSVPC_BLOCK_IMDS=yes\n"}, true, "/etc/ecs/ecs.config.json", ""},
		{"JSON key spelled right is not the agent's key", map[string]string{js: `{"AWSVPCBlockInstanceMetadata": true}`}, false, "default", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, content := range tc.files {
				full := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out, err := s.HostCommand(t.Context(), agentBin, "check", "--json", "--host-root", root,
				"--docker-host", s.DockerHost, "--status-socket", filepath.Join(root, "s.sock")).Output()
			if len(out) == 0 {
				t.Fatalf("check printed nothing: %v", err)
			}
			var st status.Status
			if err := json.Unmarshal(out, &st); err != nil {
				t.Fatalf("check --json: %v\n%s", err, out)
			}
			c := st.ECSConfig.Config
			if st.ECSConfig.AWSVPCBlockIMDS != tc.want || c == nil || c.AWSVPCBlockIMDS != tc.want {
				t.Fatalf("awsvpc_block_imds = %v, want %v\n%s", st.ECSConfig.AWSVPCBlockIMDS, tc.want, out)
			}
			if !strings.Contains(c.Source, tc.source) || !strings.Contains(c.Reason, tc.reason) {
				t.Errorf("source %q reason %q; want source with %q, reason with %q", c.Source, c.Reason, tc.source, tc.reason)
			}
			t.Logf("%-45s -> %v: %s", tc.name, c.AWSVPCBlockIMDS, c.Reason)
		})
	}
}
