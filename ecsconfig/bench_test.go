package ecsconfig

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// bigJSON is an ecs.config.json of n keys, one per line, the shape that made
// the key listing quadratic (issue 10: 2.5 MB, 200,000 keys).
func bigJSON(n int) string {
	var b strings.Builder
	b.WriteString("{\n")
	for i := range n {
		fmt.Fprintf(&b, "\"K%06d\":%d,\n", i, i%10)
	}
	b.WriteString("  \"AWSVPCBlockInstanceMetdata\": true\n}\n")
	return b.String()
}

// BenchmarkEvaluateBigJSON measures Evaluate alone (no file reading, so no
// size cap) on JSON files of growing key counts: the cost must grow linearly.
func BenchmarkEvaluateBigJSON(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 200_000} {
		content := bigJSON(n)
		b.Run(fmt.Sprintf("keys=%d/bytes=%d", n, len(content)), func(b *testing.B) {
			in := Inputs{JSONConfig: File{Path: JSONConfigPath, Present: true, Content: content}}
			b.SetBytes(int64(len(content)))
			for b.Loop() {
				res, err := Evaluate(in)
				if err != nil || !res.AWSVPCBlockIMDS {
					b.Fatalf("unexpected result %+v, %v", res, err)
				}
			}
		})
	}
}

// BenchmarkLoadRefused times Load when a file must be refused: the cost (and
// the allocation, -benchmem) stays that of a stat, whatever the file holds.
func BenchmarkLoadRefused(b *testing.B) {
	for _, tc := range []struct {
		name string
		make func(b *testing.B, root string)
	}{
		{"fifo", func(b *testing.B, root string) {
			p := filepath.Join(root, UserConfigPath)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				b.Fatal(err)
			}
		}},
		{"dev-zero", func(b *testing.B, root string) {
			if os.Geteuid() != 0 {
				b.Skip("needs root for a device node")
			}
			dev := filepath.Join(root, "dev/zero")
			os.MkdirAll(filepath.Dir(dev), 0o755)
			if err := syscall.Mknod(dev, syscall.S_IFCHR|0o666, 1<<8|5); err != nil {
				b.Fatal(err)
			}
			p := filepath.Join(root, UserConfigPath)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.Symlink("/dev/zero", p); err != nil {
				b.Fatal(err)
			}
		}},
		{"200MB", func(b *testing.B, root string) {
			p := filepath.Join(root, UserConfigPath)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				b.Fatal(err)
			}
			if err := os.Truncate(p, 200<<20); err != nil {
				b.Fatal(err)
			}
		}},
		{"json-200000-keys", func(b *testing.B, root string) {
			p := filepath.Join(root, JSONConfigPath)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte(bigJSON(200_000)), 0o644); err != nil {
				b.Fatal(err)
			}
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			root := b.TempDir()
			tc.make(b, root)
			for b.Loop() {
				if _, err := Load(root); err == nil {
					b.Fatal("Load accepted it")
				}
			}
		})
	}
}
