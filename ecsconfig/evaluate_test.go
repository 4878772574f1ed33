package ecsconfig

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func present(content string) *string { return &content }

func file(path string, content *string) File {
	if content == nil {
		return File{Path: path}
	}
	return File{Path: path, Present: true, Content: *content}
}

type wantFinding struct {
	file string
	line int
	kind string
	msg  string // substring
}

func checkResult(t *testing.T, got Result, want bool, source, raw string, reason []string, findings []wantFinding) {
	t.Helper()
	if got.AWSVPCBlockIMDS != want {
		t.Errorf("AWSVPCBlockIMDS = %v, want %v (reason: %s)", got.AWSVPCBlockIMDS, want, got.Reason)
	}
	if got.Source != source {
		t.Errorf("Source = %q, want %q", got.Source, source)
	}
	if got.RawValue != raw {
		t.Errorf("RawValue = %q, want %q", got.RawValue, raw)
	}
	if len(reason) == 0 {
		t.Errorf("test case must assert the reason; got %q", got.Reason)
	}
	for _, r := range reason {
		if !strings.Contains(got.Reason, r) {
			t.Errorf("Reason = %q\n  want it to contain %q", got.Reason, r)
		}
	}
	if got.Findings == nil {
		t.Errorf("Findings is nil, want a non-nil slice")
	}
	if len(got.Findings) != len(findings) {
		t.Errorf("got %d findings, want %d:", len(got.Findings), len(findings))
		for _, f := range got.Findings {
			t.Errorf("  %+v", f)
		}
		return
	}
	for i, w := range findings {
		g := got.Findings[i]
		if g.File != w.file || g.Line != w.line || g.Kind != w.kind || !strings.Contains(g.Message, w.msg) {
			t.Errorf("finding %d = %+v\n  want file=%s line=%d kind=%s message containing %q", i, g, w.file, w.line, w.kind, w.msg)
		}
	}
}

const (
	inst = InstanceConfigPath
	user = UserConfigPath
	jsn  = JSONConfigPath
)

func TestEvaluate(t *testing.T) {
	notSet := "ECS_AWSVPC_BLOCK_IMDS is not set in /var/lib/ecs/ecs.config or /etc/ecs/ecs.config"
	noJSON := "and /etc/ecs/ecs.config.json does not exist, so the default false applies"
	tests := []struct {
		name           string
		inst, user, js *string
		want           bool
		source, raw    string
		reason         []string
		findings       []wantFinding
	}{
		{
			name: "all files absent", want: false, source: SourceDefault,
			reason: []string{notSet + " " + noJSON},
		},
		{
			name: "true", user: present("ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\n"),
			want: true, source: user + ":2", raw: "true",
			reason: []string{"ECS_AWSVPC_BLOCK_IMDS=true at /etc/ecs/ecs.config:2 is passed to the ECS agent, which reads it as true"},
		},
		{
			name: "True", user: present("ECS_AWSVPC_BLOCK_IMDS=True"),
			want: true, source: user + ":1", raw: "True", reason: []string{"reads it as true"},
		},
		{
			name: "1", user: present("ECS_AWSVPC_BLOCK_IMDS=1\n"),
			want: true, source: user + ":1", raw: "1", reason: []string{"ECS_AWSVPC_BLOCK_IMDS=1 at", "reads it as true"},
		},
		{
			name: "t", user: present("ECS_AWSVPC_BLOCK_IMDS=t\n"),
			want: true, source: user + ":1", raw: "t", reason: []string{"reads it as true"},
		},
		{
			name: "explicit false", user: present("ECS_AWSVPC_BLOCK_IMDS=false\n"),
			want: false, source: user + ":1", raw: "false", reason: []string{"reads it as false"},
		},
		{
			name: "value with leading space is trimmed by the agent", user: present("ECS_AWSVPC_BLOCK_IMDS= true\n"),
			want: true, source: user + ":1", raw: " true", reason: []string{"reads it as true"},
		},
		{
			name: "double-quoted", user: present("ECS_CLUSTER=prod\n\nECS_AWSVPC_BLOCK_IMDS=\"true\"\n"),
			want: false, source: SourceDefault,
			reason:   []string{`"true" in quotes at /etc/ecs/ecs.config:3 is not a boolean to the ECS agent (ecs-init keeps quotes); the setting is not set, so the default false applies`},
			findings: []wantFinding{{user, 3, KindQuotedValue, `"true" in quotes at /etc/ecs/ecs.config:3 is not a boolean`}},
		},
		{
			name: "single-quoted", user: present("ECS_AWSVPC_BLOCK_IMDS='true'\n"),
			want: false, source: SourceDefault,
			reason:   []string{`'true' in quotes at /etc/ecs/ecs.config:1`, "default false applies"},
			findings: []wantFinding{{user, 1, KindQuotedValue, "ecs-init keeps quotes"}},
		},
		{
			name: "yes", user: present("ECS_AWSVPC_BLOCK_IMDS=yes\n"),
			want: false, source: SourceDefault,
			reason:   []string{`"yes" at /etc/ecs/ecs.config:1 is not a boolean to the ECS agent (it accepts 1, t, T, TRUE, true, True`, "the setting is not set, so the default false applies"},
			findings: []wantFinding{{user, 1, KindInvalidValue, `"yes" at /etc/ecs/ecs.config:1 is not a boolean`}},
		},
		{
			name: "on", user: present("ECS_AWSVPC_BLOCK_IMDS=on\n"),
			want: false, source: SourceDefault,
			reason:   []string{`"on" at /etc/ecs/ecs.config:1 is not a boolean`},
			findings: []wantFinding{{user, 1, KindInvalidValue, `"on"`}},
		},
		{
			name: "empty value", user: present("ECS_AWSVPC_BLOCK_IMDS=\n"),
			want: false, source: SourceDefault,
			reason:   []string{"ECS_AWSVPC_BLOCK_IMDS is empty at /etc/ecs/ecs.config:1, which the ECS agent treats as not set; the setting is not set, so the default false applies"},
			findings: []wantFinding{{user, 1, KindEmptyValue, "treats as not set"}},
		},
		{
			name: "spaces around equals", user: present("ECS_AWSVPC_BLOCK_IMDS = true\n"),
			want: false, source: SourceDefault,
			reason:   []string{notSet + " " + noJSON},
			findings: []wantFinding{{user, 1, KindSpacesAroundEquals, `spaces around '=' at /etc/ecs/ecs.config:1: ecs-init keeps them, so the variable name is "ECS_AWSVPC_BLOCK_IMDS "`}},
		},
		{
			name: "space before equals", user: present("ECS_AWSVPC_BLOCK_IMDS =true\n"),
			want: false, source: SourceDefault, reason: []string{notSet},
			findings: []wantFinding{{user, 1, KindSpacesAroundEquals, `"ECS_AWSVPC_BLOCK_IMDS "`}},
		},
		{
			name: "export prefix", user: present("export ECS_AWSVPC_BLOCK_IMDS=true\n"),
			want: false, source: SourceDefault, reason: []string{notSet},
			findings: []wantFinding{{user, 1, KindExportPrefix, `ecs-init does not understand 'export': the variable name at /etc/ecs/ecs.config:1 is "export ECS_AWSVPC_BLOCK_IMDS"`}},
		},
		{
			name: "commented out", user: present("#ECS_AWSVPC_BLOCK_IMDS=true\n"),
			want: false, source: SourceDefault, reason: []string{notSet},
			findings: []wantFinding{{user, 1, KindCommentedOut, `commented-out assignment at /etc/ecs/ecs.config:1 has no effect (the variable name is "#ECS_AWSVPC_BLOCK_IMDS"`}},
		},
		{
			name: "commented out with space", user: present("# ECS_AWSVPC_BLOCK_IMDS=true\n"),
			want: false, source: SourceDefault, reason: []string{notSet},
			findings: []wantFinding{{user, 1, KindCommentedOut, `"# ECS_AWSVPC_BLOCK_IMDS"`}},
		},
		{
			name: "inline comment", user: present("ECS_AWSVPC_BLOCK_IMDS=true # block IMDS\n"),
			want: false, source: SourceDefault,
			reason:   []string{`"true # block IMDS" at /etc/ecs/ecs.config:1 is not a boolean to the ECS agent (ecs-init does not strip inline comments); the setting is not set, so the default false applies`},
			findings: []wantFinding{{user, 1, KindInlineComment, "does not strip inline comments"}},
		},
		{
			name: "wrong case", user: present("ecs_awsvpc_block_imds=true\n"),
			want: false, source: SourceDefault, reason: []string{notSet},
			findings: []wantFinding{{user, 1, KindWrongCase, `variable names are case-sensitive: "ecs_awsvpc_block_imds" at /etc/ecs/ecs.config:1`}},
		},
		{
			name: "no equals sign", user: present("ECS_AWSVPC_BLOCK_IMDS: true\n"),
			want: false, source: SourceDefault, reason: []string{notSet},
			findings: []wantFinding{{user, 1, KindNoEquals, "has no '=', so ecs-init skips it"}},
		},
		{
			name: "CRLF line endings", user: present("ECS_CLUSTER=prod\r\nECS_AWSVPC_BLOCK_IMDS=true\r\n"),
			want: true, source: user + ":2", raw: "true", reason: []string{"reads it as true"},
		},
		{
			name: "leading blank lines and indentation keep real line numbers", user: present("\n\n  ECS_AWSVPC_BLOCK_IMDS=true  \n\n"),
			want: true, source: user + ":3", raw: "true", reason: []string{"at /etc/ecs/ecs.config:3"},
		},
		{
			name: "duplicates: last wins", user: present("ECS_AWSVPC_BLOCK_IMDS=false\nECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=true\n"),
			want: true, source: user + ":3", raw: "true", reason: []string{"at /etc/ecs/ecs.config:3", "reads it as true"},
			findings: []wantFinding{{user, 1, KindDuplicate, "ECS_AWSVPC_BLOCK_IMDS=false at /etc/ecs/ecs.config:1 is overridden by a later assignment at /etc/ecs/ecs.config:3 (ecs-init keeps the last one)"}},
		},
		{
			name: "duplicates: a last invalid one still wins", user: present("ECS_AWSVPC_BLOCK_IMDS=true\nECS_AWSVPC_BLOCK_IMDS=yes\n"),
			want: false, source: SourceDefault,
			reason: []string{`"yes" at /etc/ecs/ecs.config:2 is not a boolean`, "default false applies"},
			findings: []wantFinding{
				{user, 1, KindDuplicate, "overridden by a later assignment at /etc/ecs/ecs.config:2"},
				{user, 2, KindInvalidValue, `"yes"`},
			},
		},
		{
			name: "/var/lib true, /etc false", inst: present("ECS_AWSVPC_BLOCK_IMDS=true\n"), user: present("ECS_AWSVPC_BLOCK_IMDS=false\n"),
			want: false, source: user + ":1", raw: "false", reason: []string{"ECS_AWSVPC_BLOCK_IMDS=false at /etc/ecs/ecs.config:1", "reads it as false"},
			findings: []wantFinding{{inst, 1, KindOverriddenByEtc, "ECS_AWSVPC_BLOCK_IMDS=true at /var/lib/ecs/ecs.config:1 is overridden by /etc/ecs/ecs.config:1 (ecs-init reads /etc/ecs/ecs.config after /var/lib/ecs/ecs.config)"}},
		},
		{
			name: "/var/lib true, /etc absent", inst: present("ECS_AWSVPC_BLOCK_IMDS=true\n"),
			want: true, source: inst + ":1", raw: "true", reason: []string{"at /var/lib/ecs/ecs.config:1", "reads it as true"},
		},
		{
			name: "/var/lib true, /etc without the key", inst: present("ECS_AWSVPC_BLOCK_IMDS=true\n"), user: present("ECS_CLUSTER=prod\n"),
			want: true, source: inst + ":1", raw: "true", reason: []string{"reads it as true"},
		},
		{
			name: "/var/lib true, /etc empty value", inst: present("ECS_AWSVPC_BLOCK_IMDS=true\n"), user: present("ECS_AWSVPC_BLOCK_IMDS=\n"),
			want: false, source: SourceDefault, reason: []string{"is empty at /etc/ecs/ecs.config:1", "default false applies"},
			findings: []wantFinding{
				{inst, 1, KindOverriddenByEtc, "overridden by /etc/ecs/ecs.config:1"},
				{user, 1, KindEmptyValue, "treats as not set"},
			},
		},
		{
			name: "/var/lib duplicates and /etc override", inst: present("ECS_AWSVPC_BLOCK_IMDS=false\nECS_AWSVPC_BLOCK_IMDS=true\n"), user: present("ECS_AWSVPC_BLOCK_IMDS=1\n"),
			want: true, source: user + ":1", raw: "1", reason: []string{"reads it as true"},
			findings: []wantFinding{
				{inst, 1, KindDuplicate, "later assignment at /var/lib/ecs/ecs.config:2"},
				{inst, 2, KindOverriddenByEtc, "overridden by /etc/ecs/ecs.config:1"},
			},
		},
		{
			name: "JSON true, no env", js: present(`{"AWSVPCBlockInstanceMetdata": true}`),
			want: true, source: jsn, raw: "true",
			reason: []string{notSet + ", so AWSVPCBlockInstanceMetdata=true at /etc/ecs/ecs.config.json:1 applies"},
		},
		{
			name: "JSON 1 is accepted by the agent", js: present(`{"AWSVPCBlockInstanceMetdata": 1}`),
			want: true, source: jsn, raw: "1", reason: []string{"AWSVPCBlockInstanceMetdata=1"},
		},
		{
			name: "JSON key matches case-insensitively like encoding/json", js: present(`{"awsvpcblockinstancemetdata": true}`),
			want: true, source: jsn, raw: "true", reason: []string{"applies"},
		},
		{
			name: "JSON true, env false", user: present("ECS_AWSVPC_BLOCK_IMDS=false\n"), js: present("{\n  \"Cluster\": \"prod\",\n  \"AWSVPCBlockInstanceMetdata\": true\n}\n"),
			want: false, source: user + ":1", raw: "false", reason: []string{"reads it as false"},
			findings: []wantFinding{{jsn, 3, KindJSONShadowed, "AWSVPCBlockInstanceMetdata=true at /etc/ecs/ecs.config.json:3 is ignored because ECS_AWSVPC_BLOCK_IMDS at /etc/ecs/ecs.config:1 takes precedence"}},
		},
		{
			name: "JSON true, env invalid: JSON applies", user: present("ECS_AWSVPC_BLOCK_IMDS=yes\n"), js: present("{\n  \"Cluster\": \"prod\",\n  \"AWSVPCBlockInstanceMetdata\": true\n}\n"),
			want: true, source: jsn, raw: "true",
			reason:   []string{`"yes" at /etc/ecs/ecs.config:1 is not a boolean to the ECS agent`, "; the setting is not set in the environment, so AWSVPCBlockInstanceMetdata=true at /etc/ecs/ecs.config.json:3 applies"},
			findings: []wantFinding{{user, 1, KindInvalidValue, `"yes"`}},
		},
		{
			name: "JSON false with env unset", js: present(`{"AWSVPCBlockInstanceMetdata": false}`),
			want: false, source: jsn, raw: "false", reason: []string{"AWSVPCBlockInstanceMetdata=false at /etc/ecs/ecs.config.json:1 applies"},
		},
		{
			name: "JSON null means not set", js: present(`{"AWSVPCBlockInstanceMetdata": null}`),
			want: false, source: SourceDefault,
			reason: []string{notSet + " and /etc/ecs/ecs.config.json does not set AWSVPCBlockInstanceMetdata, so the default false applies"},
		},
		{
			name: "JSON without the key", js: present(`{"Cluster": "prod"}`),
			want: false, source: SourceDefault, reason: []string{"does not set AWSVPCBlockInstanceMetdata"},
		},
		{
			name: "empty JSON file is no configuration", js: present("  \n"),
			want: false, source: SourceDefault, reason: []string{"does not set AWSVPCBlockInstanceMetdata"},
		},
		{
			name: "JSON key spelled correctly is ignored by the agent", js: present("{\n\"AWSVPCBlockInstanceMetadata\": true}"),
			want: false, source: SourceDefault, reason: []string{"does not set AWSVPCBlockInstanceMetdata"},
			findings: []wantFinding{{jsn, 2, KindJSONWrongKey, `key "AWSVPCBlockInstanceMetadata" at /etc/ecs/ecs.config.json:2 is ignored by the ECS agent; its JSON key is spelled "AWSVPCBlockInstanceMetdata"`}},
		},
		{
			name: "env variable name in JSON is ignored", js: present(`{"ECS_AWSVPC_BLOCK_IMDS": true}`),
			want: false, source: SourceDefault, reason: []string{"default false"},
			findings: []wantFinding{{jsn, 1, KindJSONWrongKey, `key "ECS_AWSVPC_BLOCK_IMDS"`}},
		},
		{
			name: "findings are ordered by file then line", inst: present("export ECS_AWSVPC_BLOCK_IMDS=true\n"), user: present("ECS_AWSVPC_BLOCK_IMDS=\"true\"\n#ECS_AWSVPC_BLOCK_IMDS=true\n"),
			js:   present(`{"AWSVPCBlockInstanceMetadata": true}`),
			want: false, source: SourceDefault, reason: []string{"in quotes at /etc/ecs/ecs.config:1"},
			findings: []wantFinding{
				{inst, 1, KindExportPrefix, "export"},
				{user, 1, KindQuotedValue, "quotes"},
				{user, 2, KindCommentedOut, "commented-out"},
				{jsn, 1, KindJSONWrongKey, "spelled"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Evaluate(Inputs{
				InstanceConfig: file(inst, tc.inst),
				UserConfig:     file(user, tc.user),
				JSONConfig:     file(jsn, tc.js),
			})
			if err != nil {
				t.Fatalf("Evaluate: %v", err)
			}
			checkResult(t, got, tc.want, tc.source, tc.raw, tc.reason, tc.findings)
		})
	}
}

func TestEvaluateDefaultsDisplayPaths(t *testing.T) {
	got, err := Evaluate(Inputs{UserConfig: File{Present: true, Content: "ECS_AWSVPC_BLOCK_IMDS=true"}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Source != "/etc/ecs/ecs.config:1" {
		t.Errorf("Source = %q, want /etc/ecs/ecs.config:1", got.Source)
	}
}

func TestEvaluateJSONErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string
		check   func(error) bool
		msg     string
	}{
		{
			name: "malformed", content: `{"AWSVPCBlockInstanceMetdata": true`,
			check: func(err error) bool { var se *json.SyntaxError; return errors.As(err, &se) },
			msg:   "ecsconfig: /etc/ecs/ecs.config.json: ",
		},
		{
			name: "string value the agent cannot decode", content: `{"AWSVPCBlockInstanceMetdata": "true"}`,
			check: func(err error) bool { return err != nil },
			msg:   `AWSVPCBlockInstanceMetdata is "true", which the ECS agent cannot decode`,
		},
		{
			name: "number other than 0 or 1", content: `{"AWSVPCBlockInstanceMetdata": 2}`,
			check: func(err error) bool { return err != nil },
			msg:   "which the ECS agent cannot decode",
		},
		{
			name: "not an object", content: `["AWSVPCBlockInstanceMetdata"]`,
			check: func(err error) bool { var te *json.UnmarshalTypeError; return errors.As(err, &te) },
			msg:   "/etc/ecs/ecs.config.json",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := Inputs{
				UserConfig: File{Path: user, Present: true, Content: "ECS_AWSVPC_BLOCK_IMDS=true\n"},
				JSONConfig: File{Path: jsn, Present: true, Content: tc.content},
			}
			_, err := Evaluate(in)
			if err == nil || !tc.check(err) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Evaluate error = %v, want one containing %q of the expected type", err, tc.msg)
			}
			_, err = EvaluateContainerEnv([]string{"ECS_AWSVPC_BLOCK_IMDS=true"}, in.JSONConfig)
			if err == nil || !tc.check(err) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("EvaluateContainerEnv error = %v, want one containing %q of the expected type", err, tc.msg)
			}
		})
	}
}

func TestEvaluateContainerEnv(t *testing.T) {
	const env = SourceContainerEnv
	tests := []struct {
		name     string
		env      []string
		js       *string
		want     bool
		source   string
		raw      string
		reason   []string
		findings []wantFinding
	}{
		{
			name: "true", env: []string{"PATH=/usr/bin", "ECS_CLUSTER=prod", "ECS_AWSVPC_BLOCK_IMDS=true"},
			want: true, source: env, raw: "true",
			reason: []string{"ECS_AWSVPC_BLOCK_IMDS=true in the ecs-agent container environment is passed to the ECS agent, which reads it as true"},
		},
		{
			name: "unset, no JSON", env: []string{"PATH=/usr/bin"},
			want: false, source: SourceDefault,
			reason: []string{"ECS_AWSVPC_BLOCK_IMDS is not set in the ecs-agent container environment and /etc/ecs/ecs.config.json does not exist, so the default false applies"},
		},
		{
			name: "quoted", env: []string{`ECS_AWSVPC_BLOCK_IMDS="true"`},
			want: false, source: SourceDefault,
			reason:   []string{`"true" in quotes in the ecs-agent container environment is not a boolean to the ECS agent (the quotes are part of the value); the setting is not set, so the default false applies`},
			findings: []wantFinding{{env, 0, KindQuotedValue, "the quotes are part of the value"}},
		},
		{
			name: "first duplicate wins (Go os.Getenv)", env: []string{"ECS_AWSVPC_BLOCK_IMDS=true", "ECS_AWSVPC_BLOCK_IMDS=false"},
			want: true, source: env, raw: "true", reason: []string{"reads it as true"},
			findings: []wantFinding{{env, 0, KindDuplicate, `a later ECS_AWSVPC_BLOCK_IMDS entry with value "false" is ignored: the ECS agent reads the first one ("true")`}},
		},
		{
			name: "name with trailing space from ecs.config", env: []string{"ECS_AWSVPC_BLOCK_IMDS =true"},
			want: false, source: SourceDefault, reason: []string{"is not set in the ecs-agent container environment"},
			findings: []wantFinding{{env, 0, KindSpacesAroundEquals, `spaces around '=' in the ecs-agent container environment: the environment keeps them, so the variable name is "ECS_AWSVPC_BLOCK_IMDS "`}},
		},
		{
			name: "entries without '=' are ignored", env: []string{"ECS_AWSVPC_BLOCK_IMDS", "ECS_AWSVPC_BLOCK_IMDS=1"},
			want: true, source: env, raw: "1", reason: []string{"reads it as true"},
		},
		{
			name: "invalid env, JSON true", env: []string{"ECS_AWSVPC_BLOCK_IMDS=on"}, js: present(`{"AWSVPCBlockInstanceMetdata": true}`),
			want: true, source: jsn, raw: "true",
			reason:   []string{`"on" in the ecs-agent container environment is not a boolean`, "not set in the environment, so AWSVPCBlockInstanceMetdata=true at /etc/ecs/ecs.config.json:1 applies"},
			findings: []wantFinding{{env, 0, KindInvalidValue, `"on"`}},
		},
		{
			name: "env false shadows JSON true", env: []string{"ECS_AWSVPC_BLOCK_IMDS=false"}, js: present(`{"AWSVPCBlockInstanceMetdata": true}`),
			want: false, source: env, raw: "false", reason: []string{"reads it as false"},
			findings: []wantFinding{{jsn, 1, KindJSONShadowed, "is ignored because ECS_AWSVPC_BLOCK_IMDS in the ecs-agent container environment takes precedence"}},
		},
		{
			name: "unset env, JSON true", env: nil, js: present(`{"AWSVPCBlockInstanceMetdata": true}`),
			want: true, source: jsn, raw: "true",
			reason: []string{"ECS_AWSVPC_BLOCK_IMDS is not set in the ecs-agent container environment, so AWSVPCBlockInstanceMetdata=true at /etc/ecs/ecs.config.json:1 applies"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := EvaluateContainerEnv(tc.env, file(jsn, tc.js))
			if err != nil {
				t.Fatalf("EvaluateContainerEnv: %v", err)
			}
			checkResult(t, got, tc.want, tc.source, tc.raw, tc.reason, tc.findings)
		})
	}
}

func TestResultJSON(t *testing.T) {
	got, err := Evaluate(Inputs{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"awsvpc_block_imds":false`, `"source":"default"`, `"raw_value":""`, `"reason":"`, `"findings":[]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON %s lacks %s", b, want)
		}
	}
}

// A typical ECS-optimized AMI ecs.config plus operator additions.
const benchConfig = `ECS_CLUSTER=production-web
ECS_ENABLE_TASK_IAM_ROLE=true
ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=true
ECS_LOGLEVEL=info
ECS_LOGFILE=/log/ecs-agent.log
ECS_AVAILABLE_LOGGING_DRIVERS=["json-file","awslogs","fluentd","syslog"]
ECS_ENABLE_CONTAINER_METADATA=true
ECS_ENABLE_SPOT_INSTANCE_DRAINING=true
ECS_CONTAINER_STOP_TIMEOUT=60s
ECS_CONTAINER_START_TIMEOUT=5m
ECS_IMAGE_PULL_BEHAVIOR=prefer-cached
ECS_IMAGE_CLEANUP_INTERVAL=30m
ECS_IMAGE_MINIMUM_CLEANUP_AGE=1h
ECS_NUM_IMAGES_DELETE_PER_CYCLE=10
ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION=1h
ECS_RESERVED_MEMORY=256
ECS_RESERVED_PORTS=[22,2375,2376,51678,51679]
ECS_INSTANCE_ATTRIBUTES={"team":"web","tier":"frontend"}
ECS_CONTAINER_INSTANCE_TAGS={"cost-center":"1234"}
ECS_CONTAINER_INSTANCE_PROPAGATE_TAGS_FROM=ec2_instance
ECS_ENABLE_TASK_ENI=true
ECS_ENABLE_HIGH_DENSITY_ENI=true
ECS_AWSVPC_ADDITIONAL_LOCAL_ROUTES=["10.0.0.0/8"]
# hardening
ECS_DISABLE_PRIVILEGED=true
ECS_SELINUX_CAPABLE=false
ECS_AWSVPC_BLOCK_IMDS=false
ECS_ENABLE_TASK_CPU_MEM_LIMIT=true
ECS_WARM_POOLS_CHECK=true
ECS_AWSVPC_BLOCK_IMDS=true
`

func BenchmarkEvaluate(b *testing.B) {
	in := Inputs{
		InstanceConfig: File{Path: inst, Present: true, Content: "ECS_ENABLE_GPU_SUPPORT=false\n"},
		UserConfig:     File{Path: user, Present: true, Content: benchConfig},
		JSONConfig:     File{Path: jsn, Present: true, Content: `{"Cluster": "production-web", "AWSVPCBlockInstanceMetdata": false}`},
	}
	for b.Loop() {
		res, err := Evaluate(in)
		if err != nil || !res.AWSVPCBlockIMDS {
			b.Fatalf("unexpected result %+v, %v", res, err)
		}
	}
}
