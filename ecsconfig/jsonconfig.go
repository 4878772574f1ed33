package ecsconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// jsonSetting is what /etc/ecs/ecs.config.json says about the setting.
type jsonSetting struct {
	path    string
	present bool
	set     bool // a non-null value the agent accepts
	value   bool
	raw     string
	line    int
}

func (j jsonSetting) loc() location { return location{file: j.path, line: j.line} }

// agentBool mirrors the agent's BooleanDefaultFalse.UnmarshalJSON, which runs
// strconv.ParseBool on the raw JSON text: true, false, 1 and 0 are accepted,
// null means not set, anything else (including the string "true") fails the
// agent's decoding of the whole file.
type agentBool struct {
	set   bool
	value bool
	raw   string
}

func (b *agentBool) UnmarshalJSON(data []byte) error {
	s := string(data)
	if s == "null" {
		*b = agentBool{raw: s}
		return nil
	}
	v, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%s is %s, which the ECS agent cannot decode (it accepts true, false, 1, 0 or null): %w", JSONKey, s, err)
	}
	*b = agentBool{set: true, value: v, raw: s}
	return nil
}

// parseJSONConfig decodes the file with encoding/json like the agent does, so
// case-insensitive key matching and last-duplicate-wins carry over.
func parseJSONConfig(f File) (jsonSetting, []Finding, error) {
	js := jsonSetting{path: f.Path, present: f.Present}
	// The agent treats an empty file as no configuration.
	if !f.Present || strings.TrimSpace(f.Content) == "" {
		return js, nil, nil
	}
	var cfg struct {
		V agentBool `json:"AWSVPCBlockInstanceMetdata"`
	}
	if err := json.Unmarshal([]byte(f.Content), &cfg); err != nil {
		return js, nil, fmt.Errorf("ecsconfig: %s: %w", f.Path, err)
	}
	js.set, js.value, js.raw = cfg.V.set, cfg.V.value, cfg.V.raw

	var findings []Finding
	for _, k := range topLevelKeys(f.Content) {
		switch {
		case strings.EqualFold(k.name, JSONKey):
			js.line = k.line // the last one is the one that counts
		case strings.EqualFold(k.name, "AWSVPCBlockInstanceMetadata"), strings.EqualFold(k.name, EnvKey):
			findings = append(findings, Finding{
				File: f.Path, Line: k.line, Kind: KindJSONWrongKey,
				Message: fmt.Sprintf("key %q at %s:%d is ignored by the ECS agent; its JSON key is spelled %q", k.name, f.Path, k.line, JSONKey),
			})
		}
	}
	return js, findings, nil
}

type jsonKey struct {
	name string
	line int
}

// topLevelKeys lists the keys of a top-level JSON object with their line
// numbers, for messages only; decoding semantics come from json.Unmarshal.
func topLevelKeys(content string) []jsonKey {
	data := []byte(content)
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	var keys []jsonKey
	// Lines are counted from the previous key on, so the listing stays
	// linear in the file size (counting from the start each time made a
	// 200,000-key file take seconds per evaluation).
	line, counted := 1, int64(0)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return keys
		}
		name, _ := tok.(string)
		off := dec.InputOffset()
		line += bytes.Count(data[counted:off], []byte("\n"))
		counted = off
		keys = append(keys, jsonKey{name: name, line: line})
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return keys
		}
	}
	return keys
}
