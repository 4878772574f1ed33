package ecsconfig

import (
	"reflect"
	"strings"
	"testing"
)

var fuzzEnvSeeds = []string{
	"",
	"ECS_AWSVPC_BLOCK_IMDS=true\n",
	"ECS_CLUSTER=prod\nECS_AWSVPC_BLOCK_IMDS=false\r\nECS_AWSVPC_BLOCK_IMDS= 1 \n",
	"export ECS_AWSVPC_BLOCK_IMDS=true\n#ECS_AWSVPC_BLOCK_IMDS=true\necs_awsvpc_block_imds=true\n",
	"ECS_AWSVPC_BLOCK_IMDS = true\nECS_AWSVPC_BLOCK_IMDS=\"true\"\nECS_AWSVPC_BLOCK_IMDS=true # on\n",
	"ECS_AWSVPC_BLOCK_IMDS\n=\n==\n\x00=\xff\n",
}

var fuzzJSONSeeds = []string{
	"",
	"{}",
	`{"AWSVPCBlockInstanceMetdata": true}`,
	`{"awsvpcblockinstancemetdata": 1, "AWSVPCBlockInstanceMetdata": null}`,
	`{"AWSVPCBlockInstanceMetadata": true, "ECS_AWSVPC_BLOCK_IMDS": true}`,
	`{"AWSVPCBlockInstanceMetdata": "true"}`,
	`{"\u0041WSVPCBlockInstanceMetdata": false, "x": {"AWSVPCBlockInstanceMetdata": true}}`,
	`[1, 2]`,
	`{"a":`,
}

// FuzzEvaluate: any two env files and any JSON file evaluate without
// panicking, and twice to the same result. Rewrite keeps every line that is
// not the setting and makes the files evaluate to true.
func FuzzEvaluate(f *testing.F) {
	for i, e := range fuzzEnvSeeds {
		for _, j := range fuzzJSONSeeds {
			f.Add(fuzzEnvSeeds[(i+1)%len(fuzzEnvSeeds)], e, j)
		}
	}
	f.Fuzz(func(t *testing.T, inst, user, js string) {
		in := Inputs{
			InstanceConfig: File{Path: InstanceConfigPath, Present: true, Content: inst},
			UserConfig:     File{Path: UserConfigPath, Present: true, Content: user},
			JSONConfig:     File{Path: JSONConfigPath, Present: js != "", Content: js},
		}
		res1, err1 := Evaluate(in)
		res2, err2 := Evaluate(in)
		if !reflect.DeepEqual(res1, res2) || (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("not deterministic:\n%+v, %v\n%+v, %v", res1, err1, res2, err2)
		}

		out, _ := Rewrite(user)
		if !keepsOtherLines(user, out) {
			t.Fatalf("Rewrite(%q) = %q lost or changed a line", user, out)
		}
		in.UserConfig.Content = out
		res, err := Evaluate(in)
		if err1 == nil && (err != nil || !res.AWSVPCBlockIMDS) {
			t.Fatalf("after Rewrite(%q) = %q: %+v, %v; want true", user, out, res, err)
		}
		if again, changed := Rewrite(out); changed || again != out {
			t.Fatalf("Rewrite not idempotent on %q: %q", out, again)
		}
	})
}

// keepsOtherLines reports whether out keeps every byte of in except the
// values on lines that set the key: either in is a prefix of out (a line was
// appended) or the two have the same lines, equal except those setting it.
func keepsOtherLines(in, out string) bool {
	if strings.HasPrefix(out, in) {
		return true
	}
	a, b := strings.Split(in, "\n"), strings.Split(out, "\n")
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if k, _, ok := strings.Cut(strings.TrimSpace(a[i]), "="); a[i] != b[i] && (!ok || k != EnvKey) {
			return false
		}
	}
	return true
}

// FuzzJSONConfig: the JSON reader never panics, agrees with itself, and
// only ever reports a line that exists in the file.
func FuzzJSONConfig(f *testing.F) {
	for _, j := range fuzzJSONSeeds {
		f.Add(j)
	}
	f.Add(bigJSON(50))
	f.Fuzz(func(t *testing.T, js string) {
		file := File{Path: JSONConfigPath, Present: true, Content: js}
		s1, f1, e1 := parseJSONConfig(file)
		s2, f2, e2 := parseJSONConfig(file)
		if s1 != s2 || !reflect.DeepEqual(f1, f2) || (e1 == nil) != (e2 == nil) {
			t.Fatalf("not deterministic on %q", js)
		}
		lines := strings.Count(js, "\n") + 1
		if s1.line > lines {
			t.Fatalf("key line %d beyond the file's %d lines", s1.line, lines)
		}
		for _, fd := range f1 {
			if fd.Line < 1 || fd.Line > lines {
				t.Fatalf("finding at line %d of %d: %+v", fd.Line, lines, fd)
			}
		}
		if e1 == nil && s1.set && s1.raw == "" {
			t.Fatalf("set without a raw value: %+v", s1)
		}
	})
}
