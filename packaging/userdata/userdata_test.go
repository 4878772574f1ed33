package userdata

import (
	"bytes"
	"compress/gzip"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// parse reads generated user data back with the standard library, the way
// any MIME consumer would, and returns the parts' types and decoded bodies.
func parse(t *testing.T, data []byte) (types []string, bodies []string) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("not a MIME message: %v\n%s", err, data)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("top-level type %q (%v), want multipart/mixed", mt, err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		b, _ := io.ReadAll(p)
		types = append(types, ct)
		bodies = append(bodies, string(b))
	}
	return types, bodies
}

const mimeInput = `Content-Type: multipart/mixed; boundary="XYZ"
MIME-Version: 1.0

--XYZ
Content-Type: text/cloud-config; charset="us-ascii"

#cloud-config
packages: [jq]
--XYZ
Content-Type: text/x-shellscript; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable

#!/bin/bash
echo "ECS_CLUSTER=3Dold" >> /etc/ecs/ecs.config
--XYZ--
`

func gz(s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	w.Close()
	return b.Bytes()
}

func TestGenerate(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		wantTypes []string
		wantErr   string
		// substrings expected in the part with the same index
		wantIn map[int][]string
	}{
		{
			name:      "baked AMI, no ECS settings",
			opts:      Options{},
			wantTypes: []string{"text/cloud-boothook"},
			wantIn:    map[int][]string{0: {"package_url=''", "imdsguard apply", "systemctl enable imdsguard.service"}},
		},
		{
			name:      "cluster and awsvpc",
			opts:      Options{Cluster: "my-ecs-cluster", EnforceAWSVPC: true, PackageURL: "https://example.com/imdsguard_1.0_amd64.rpm"},
			wantTypes: []string{"text/cloud-boothook", "text/x-shellscript"},
			wantIn: map[int][]string{
				0: {"package_url='https://example.com/imdsguard_1.0_amd64.rpm'", "dnf install -y"},
				1: {"set_ecs_option ECS_CLUSTER 'my-ecs-cluster'", "set_ecs_option ECS_AWSVPC_BLOCK_IMDS true"},
			},
		},
		{
			name:      "s3 package",
			opts:      Options{PackageURL: "s3://bucket/pkgs/imdsguard.deb", EnforceAWSVPC: true},
			wantTypes: []string{"text/cloud-boothook", "text/x-shellscript"},
			wantIn:    map[int][]string{0: {"package_url='s3://bucket/pkgs/imdsguard.deb'", "aws s3 cp"}},
		},
		{
			name:      "presigned URL",
			opts:      Options{PackageURL: "https://b.s3.amazonaws.com/imdsguard.rpm?X-Amz-Signature=ab%2Fc&X-Amz-Expires=3600"},
			wantTypes: []string{"text/cloud-boothook"},
		},
		{
			name:      "merge MIME keeps parts between ours",
			opts:      Options{Cluster: "c1", Merge: []byte(mimeInput)},
			wantTypes: []string{"text/cloud-boothook", "text/cloud-config", "text/x-shellscript", "text/x-shellscript"},
			wantIn: map[int][]string{
				1: {"packages: [jq]"},
				2: {`echo "ECS_CLUSTER=old"`},
				3: {"ECS_CLUSTER 'c1'"},
			},
		},
		{
			name:      "merge plain script",
			opts:      Options{EnforceAWSVPC: true, Merge: []byte("#!/bin/bash\necho hi\n")},
			wantTypes: []string{"text/cloud-boothook", "text/x-shellscript", "text/x-shellscript"},
			wantIn:    map[int][]string{1: {"echo hi"}},
		},
		{
			name:      "merge cloud-config",
			opts:      Options{Merge: []byte("#cloud-config\nruncmd: [ls]\n")},
			wantTypes: []string{"text/cloud-boothook", "text/cloud-config"},
		},
		{
			name:      "merge gzip",
			opts:      Options{Merge: gz("#cloud-config\nruncmd: [ls]\n")},
			wantTypes: []string{"text/cloud-boothook", "text/cloud-config"},
		},
		{
			name:      "merge single-part MIME",
			opts:      Options{Merge: []byte("Content-Type: text/cloud-config\n\n#cloud-config\n{}\n")},
			wantTypes: []string{"text/cloud-boothook", "text/cloud-config"},
		},
		{
			name:      "merge whose body holds our boundary",
			opts:      Options{Merge: []byte("#!/bin/sh\necho --==IMDSGUARD==\n")},
			wantTypes: []string{"text/cloud-boothook", "text/x-shellscript"},
			wantIn:    map[int][]string{1: {"echo --==IMDSGUARD=="}},
		},
		{name: "merge unknown format", opts: Options{Merge: []byte("hello\n")}, wantErr: "cannot tell"},
		{name: "merge multipart without boundary", opts: Options{Merge: []byte("Content-Type: multipart/mixed\n\nx")}, wantErr: "boundary"},
		{name: "bad cluster", opts: Options{Cluster: "a b'; rm -rf /"}, wantErr: "cluster name"},
		{name: "bad URL scheme", opts: Options{PackageURL: "ftp://x/imdsguard.rpm"}, wantErr: "package URL"},
		{name: "URL with quote", opts: Options{PackageURL: "https://x/'$(id)'.rpm"}, wantErr: "package URL"},
		{name: "URL not a package", opts: Options{PackageURL: "https://x/imdsguard.tar.gz"}, wantErr: ".rpm or .deb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Generate(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			types, bodies := parse(t, out)
			if strings.Join(types, ",") != strings.Join(tt.wantTypes, ",") {
				t.Fatalf("part types %v, want %v\n%s", types, tt.wantTypes, out)
			}
			for i, subs := range tt.wantIn {
				for _, s := range subs {
					if !strings.Contains(bodies[i], s) {
						t.Errorf("part %d lacks %q:\n%s", i, s, bodies[i])
					}
				}
			}
			if len(out) > MaxSize {
				t.Errorf("user data is %d bytes, over EC2's %d", len(out), MaxSize)
			}
		})
	}
}

// TestScriptsParse runs bash -n on every script the generator can emit.
func TestScriptsParse(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	for name, s := range map[string]string{
		"boothook-empty": Boothook(""),
		"boothook-url":   Boothook("https://x/y.rpm?a=b&c=d"),
		"ecs":            ECSScript("c", true),
	} {
		f := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(f, []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bash, "-n", f).CombinedOutput(); err != nil {
			t.Errorf("%s: bash -n: %v\n%s", name, err, out)
		}
	}
}

// TestECSScriptIdempotent runs the settings script twice on a config that
// already has a stale ECS_CLUSTER and checks one line per key survives.
func TestECSScriptIdempotent(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "ecs", "ecs.config")
	os.MkdirAll(filepath.Dir(cfg), 0o755)
	os.WriteFile(cfg, []byte("ECS_LOGLEVEL=debug\nECS_CLUSTER=old\nECS_CLUSTER=older\n"), 0o640)
	script := strings.Replace(ECSScript("new", true), "ecs_config=/etc/ecs/ecs.config", "ecs_config="+cfg, 1)
	for i := 0; i < 2; i++ {
		if out, err := exec.Command("bash", "-c", script).CombinedOutput(); err != nil {
			t.Fatalf("run %d: %v\n%s", i, err, out)
		}
	}
	got, _ := os.ReadFile(cfg)
	want := "ECS_LOGLEVEL=debug\nECS_CLUSTER=new\nECS_AWSVPC_BLOCK_IMDS=true\n"
	if string(got) != want {
		t.Errorf("ecs.config =\n%s\nwant\n%s", got, want)
	}
	if fi, _ := os.Stat(cfg); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640 kept", fi.Mode().Perm())
	}
	// A missing file is created.
	os.Remove(cfg)
	if out, err := exec.Command("bash", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got, _ := os.ReadFile(cfg); !bytes.Contains(got, []byte("ECS_AWSVPC_BLOCK_IMDS=true\n")) {
		t.Errorf("new ecs.config = %q", got)
	}
}
