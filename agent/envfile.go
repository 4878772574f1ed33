package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// DefaultConfigFile is the unit's EnvironmentFile, which every command reads
// so that `check` and `apply` from a shell see what the daemon sees.
const DefaultConfigFile = "/etc/imdsguard/imdsguard.env"

// maxConfigFile caps the settings file; it holds a dozen lines.
const maxConfigFile = 1 << 20

// envSetting is one KEY=VALUE of a settings file.
type envSetting struct {
	value string
	line  int
}

// readEnvFile reads a systemd EnvironmentFile: KEY=VALUE lines, blank lines
// and lines starting with # or ; ignored, whitespace around key and value
// dropped, a value wholly in single or double quotes unquoted (backslash
// escapes inside double quotes), and a trailing backslash joining the next
// line. Anything else is an error naming file and line: a setting the
// daemon and a shell would read differently must not pass silently.
func readEnvFile(name string) (map[string]envSetting, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxConfigFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxConfigFile)
	}
	return parseEnvFile(name, string(b))
}

func parseEnvFile(name, content string) (map[string]envSetting, error) {
	out := map[string]envSetting{}
	lines := strings.Split(content, "\n")
	for i := 0; i < len(lines); i++ {
		n := i + 1
		line := strings.TrimRight(lines[i], "\r")
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = line[:len(line)-1] + strings.TrimRight(lines[i], "\r")
		}
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		key = strings.TrimSpace(key)
		if !ok || !validEnvKey(key) {
			return nil, fmt.Errorf("%s:%d: want KEY=VALUE, got %q", name, n, line)
		}
		v, err := unquote(strings.TrimSpace(val))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %s: %w", name, n, key, err)
		}
		out[key] = envSetting{value: v, line: n}
	}
	return out, nil
}

func validEnvKey(k string) bool {
	if k == "" || k[0] >= '0' && k[0] <= '9' {
		return false
	}
	for _, c := range k {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func unquote(v string) (string, error) {
	if v == "" || v[0] != '"' && v[0] != '\'' {
		return v, nil
	}
	q := v[0]
	if len(v) < 2 || v[len(v)-1] != q {
		return "", errors.New("unterminated quote")
	}
	inner := v[1 : len(v)-1]
	if q == '\'' {
		return inner, nil
	}
	var b strings.Builder
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		if c == '\\' && i+1 < len(inner) {
			i++
			c = inner[i]
		} else if c == '"' {
			return "", errors.New("unescaped quote inside a double-quoted value")
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}
