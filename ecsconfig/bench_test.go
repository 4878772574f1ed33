package ecsconfig

import (
	"fmt"
	"strings"
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
