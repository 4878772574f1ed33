package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCmdUserdata(t *testing.T) {
	merge := filepath.Join(t.TempDir(), "old.sh")
	os.WriteFile(merge, []byte("#!/bin/bash\necho old\n"), 0o644)
	tests := []struct {
		args       []string
		code       int
		out, errIn string
	}{
		{[]string{"--cluster", "prod", "--enforce-awsvpc"}, 0, "ECS_AWSVPC_BLOCK_IMDS true", ""},
		{[]string{"--merge", merge}, 0, "echo old", ""},
		{[]string{"-h"}, 0, "usage: imdsguard userdata", ""},
		{[]string{"--nope"}, 2, "", "flag provided but not defined"},
		{[]string{"extra"}, 2, "", "unexpected argument"},
		{[]string{"--cluster", "bad name"}, 2, "", "cluster name"},
		{[]string{"--merge", "/does/not/exist"}, 2, "", "--merge"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := cmdUserdata(context.Background(), tt.args, &stdout, &stderr)
		if code != tt.code {
			t.Errorf("%v: exit %d, want %d (stderr %q)", tt.args, code, tt.code, stderr.String())
		}
		if !strings.Contains(stdout.String(), tt.out) {
			t.Errorf("%v: stdout lacks %q", tt.args, tt.out)
		}
		if tt.errIn != "" {
			if !strings.Contains(stderr.String(), tt.errIn) || strings.Count(stderr.String(), "\n") != 1 {
				t.Errorf("%v: stderr %q, want one line containing %q", tt.args, stderr.String(), tt.errIn)
			}
		}
	}
}
