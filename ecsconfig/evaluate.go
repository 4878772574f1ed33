// Package ecsconfig works out whether the Amazon ECS agent on this host will
// run with ECS_AWSVPC_BLOCK_IMDS enabled, explains why, and can enforce it.
//
// It mirrors how the value actually reaches the agent rather than how an
// operator might expect it to: ecs-init builds the agent container's
// environment from /var/lib/ecs/ecs.config and then /etc/ecs/ecs.config with
// a naive line parser (no quote, comment, "export" or whitespace-around-'='
// handling); the agent parses the variable with strconv.ParseBool after
// trimming spaces; when the variable is empty or invalid the JSON file
// /etc/ecs/ecs.config.json (key "AWSVPCBlockInstanceMetdata", typo included)
// applies; otherwise the default is false. EC2 user-data configuration
// ({"ECSAgentConfiguration":...}) is not considered.
package ecsconfig

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

const (
	// EnvKey is the variable the ECS agent reads.
	EnvKey = "ECS_AWSVPC_BLOCK_IMDS"
	// JSONKey is the agent's config field name, misspelled as in the agent.
	JSONKey = "AWSVPCBlockInstanceMetdata"

	// InstanceConfigPath is read first by ecs-init; UserConfigPath overrides it.
	InstanceConfigPath = "/var/lib/ecs/ecs.config"
	UserConfigPath     = "/etc/ecs/ecs.config"
	JSONConfigPath     = "/etc/ecs/ecs.config.json"

	// SourceDefault and SourceContainerEnv are Result.Source values that are
	// not file locations.
	SourceDefault      = "default"
	SourceContainerEnv = "ecs-agent container environment"
)

// Finding kinds.
const (
	KindSpacesAroundEquals = "spaces_around_equals"
	KindExportPrefix       = "export_prefix"
	KindCommentedOut       = "commented_out"
	KindWrongCase          = "wrong_case"
	KindNoEquals           = "no_equals"
	KindQuotedValue        = "quoted_value"
	KindInlineComment      = "inline_comment"
	KindInvalidValue       = "invalid_value"
	KindEmptyValue         = "empty_value"
	KindDuplicate          = "duplicate_overridden"
	KindOverriddenByEtc    = "overridden_by_etc"
	KindJSONShadowed       = "json_shadowed"
	KindJSONWrongKey       = "json_wrong_key"
)

// File is one configuration file's contents as read from the host.
type File struct {
	// Path is the in-host path used in messages, e.g. /etc/ecs/ecs.config.
	Path string
	// Present is false when the file does not exist, which is normal.
	Present bool
	Content string
}

// Inputs are the three files that decide the agent's setting.
type Inputs struct {
	InstanceConfig File // /var/lib/ecs/ecs.config
	UserConfig     File // /etc/ecs/ecs.config
	JSONConfig     File // /etc/ecs/ecs.config.json
}

// Finding is a near-miss an operator would want to know about.
type Finding struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"`
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// Result is the effective setting and its explanation.
type Result struct {
	// AWSVPCBlockIMDS is the value the ECS agent will use.
	AWSVPCBlockIMDS bool `json:"awsvpc_block_imds"`
	// Source is "path:line", the JSON file path, SourceContainerEnv or
	// SourceDefault.
	Source string `json:"source"`
	// RawValue is the literal value at Source; empty for SourceDefault.
	RawValue string    `json:"raw_value"`
	Reason   string    `json:"reason"`
	Findings []Finding `json:"findings"`
}

type location struct {
	file string
	line int // 0 when there is no meaningful line
}

// where reads naturally after a noun: "at /etc/ecs/ecs.config:3",
// "in the ecs-agent container environment".
func (l location) where() string {
	switch {
	case l.file == SourceContainerEnv:
		return "in the " + SourceContainerEnv
	case l.line > 0:
		return "at " + l.String()
	}
	return "in " + l.file
}

func (l location) String() string {
	if l.line > 0 {
		return fmt.Sprintf("%s:%d", l.file, l.line)
	}
	return l.file
}

type assignment struct {
	loc location
	raw string
}

// envOrigin words messages for where the environment came from.
type envOrigin struct {
	quoteNote   string // why quotes survive
	commentNote string // why an inline comment survives
	notSetIn    string // "is not set in ..."
}

var filesOrigin = envOrigin{
	quoteNote:   "ecs-init keeps quotes",
	commentNote: "ecs-init does not strip inline comments",
}

var containerOrigin = envOrigin{
	quoteNote:   "the quotes are part of the value",
	commentNote: "the comment is part of the value",
	notSetIn:    "the " + SourceContainerEnv,
}

// Evaluate returns the ECS_AWSVPC_BLOCK_IMDS value the ECS agent will see
// when ecs-init next starts it from these files. Empty display paths default
// to the standard in-host paths. A JSON file the agent cannot decode is an
// error.
func Evaluate(in Inputs) (Result, error) {
	inst := withDefaultPath(in.InstanceConfig, InstanceConfigPath)
	user := withDefaultPath(in.UserConfig, UserConfigPath)
	js, findings, err := parseJSONConfig(withDefaultPath(in.JSONConfig, JSONConfigPath))
	if err != nil {
		return Result{}, err
	}

	instAssigns, f := scanEnvFile(inst)
	findings = append(findings, f...)
	userAssigns, f := scanEnvFile(user)
	findings = append(findings, f...)

	var winner *assignment
	switch {
	case len(userAssigns) > 0:
		winner = &userAssigns[len(userAssigns)-1]
	case len(instAssigns) > 0:
		winner = &instAssigns[len(instAssigns)-1]
	}
	findings = append(findings, overrideFindings(instAssigns, winner)...)
	findings = append(findings, overrideFindings(userAssigns, winner)...)
	for _, a := range append(append([]assignment(nil), instAssigns...), userAssigns...) {
		if fd, ok := valueFinding(a, filesOrigin); ok {
			findings = append(findings, fd)
		}
	}

	origin := filesOrigin
	origin.notSetIn = inst.Path + " or " + user.Path
	res := resolve(winner, origin, js, findings)
	sortFindings(res.Findings, []string{inst.Path, user.Path, js.path})
	return res, nil
}

// EvaluateContainerEnv does the same for a running ecs-agent container, whose
// environment (as Docker reports it, "KEY=VALUE" entries) is what the agent
// actually read at start-up. jsonCfg is /etc/ecs/ecs.config.json.
func EvaluateContainerEnv(env []string, jsonCfg File) (Result, error) {
	js, findings, err := parseJSONConfig(withDefaultPath(jsonCfg, JSONConfigPath))
	if err != nil {
		return Result{}, err
	}
	loc := location{file: SourceContainerEnv}
	var winner *assignment
	for _, entry := range env {
		key, val, ok := strings.Cut(entry, "=")
		if !ok {
			continue
		}
		if key != EnvKey {
			if kind, near := nearMissKey(key); near {
				findings = append(findings, keyFinding(loc, key, kind, "the environment"))
			}
			continue
		}
		a := assignment{loc: loc, raw: val}
		if winner != nil {
			// Go's os.Getenv, which the agent uses, returns the first entry.
			findings = append(findings, Finding{
				File: loc.file, Kind: KindDuplicate,
				Message: fmt.Sprintf("a later %s entry with value %q is ignored: the ECS agent reads the first one (%q)", EnvKey, val, winner.raw),
			})
			continue
		}
		winner = &a
		if fd, ok := valueFinding(a, containerOrigin); ok {
			findings = append(findings, fd)
		}
	}
	res := resolve(winner, containerOrigin, js, findings)
	sortFindings(res.Findings, []string{SourceContainerEnv, js.path})
	return res, nil
}

func withDefaultPath(f File, p string) File {
	if f.Path == "" {
		f.Path = p
	}
	return f
}

type valueKind int

const (
	valueBool valueKind = iota
	valueEmpty
	valueQuoted
	valueComment
	valueInvalid
)

// classify mirrors the agent: strconv.ParseBool(strings.TrimSpace(v)),
// empty means not set, anything else unparsable is ignored.
func classify(raw string) (valueKind, bool) {
	v := strings.TrimSpace(raw)
	if v == "" {
		return valueEmpty, false
	}
	if b, err := strconv.ParseBool(v); err == nil {
		return valueBool, b
	}
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		return valueQuoted, false
	}
	if strings.Contains(v, "#") {
		return valueComment, false
	}
	return valueInvalid, false
}

// unusable describes why the agent ignores a value; ok is false when the
// value is a usable boolean.
func unusable(a assignment, o envOrigin) (kind, msg string, ok bool) {
	k, _ := classify(a.raw)
	switch k {
	case valueEmpty:
		return KindEmptyValue, fmt.Sprintf("%s is empty %s, which the ECS agent treats as not set", EnvKey, a.loc.where()), true
	case valueQuoted:
		return KindQuotedValue, fmt.Sprintf("%s in quotes %s is not a boolean to the ECS agent (%s)", strings.TrimSpace(a.raw), a.loc.where(), o.quoteNote), true
	case valueComment:
		return KindInlineComment, fmt.Sprintf("%q %s is not a boolean to the ECS agent (%s)", strings.TrimSpace(a.raw), a.loc.where(), o.commentNote), true
	case valueInvalid:
		return KindInvalidValue, fmt.Sprintf("%q %s is not a boolean to the ECS agent (it accepts 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)", strings.TrimSpace(a.raw), a.loc.where()), true
	}
	return "", "", false
}

func valueFinding(a assignment, o envOrigin) (Finding, bool) {
	kind, msg, ok := unusable(a, o)
	if !ok {
		return Finding{}, false
	}
	return Finding{File: a.loc.file, Line: a.loc.line, Kind: kind, Message: msg}, true
}

// resolve applies the agent's precedence: a usable environment value, then
// the JSON file, then the default false.
func resolve(winner *assignment, o envOrigin, js jsonSetting, findings []Finding) Result {
	res := Result{Findings: findings}
	if res.Findings == nil {
		res.Findings = []Finding{}
	}
	var prefix string // why the environment did not decide
	if winner != nil {
		if _, msg, bad := unusable(*winner, o); bad {
			prefix = msg + "; the setting is not set"
			if js.set {
				prefix += " in the environment"
			}
		} else {
			_, b := classify(winner.raw)
			res.AWSVPCBlockIMDS = b
			res.Source = winner.loc.String()
			res.RawValue = winner.raw
			res.Reason = fmt.Sprintf("%s=%s %s is passed to the ECS agent, which reads it as %t", EnvKey, winner.raw, winner.loc.where(), b)
			if js.set {
				res.Findings = append(res.Findings, Finding{
					File: js.path, Line: js.line, Kind: KindJSONShadowed,
					Message: fmt.Sprintf("%s=%s %s is ignored because %s %s takes precedence", JSONKey, js.raw, js.loc().where(), EnvKey, winner.loc.where()),
				})
			}
			return res
		}
	} else {
		prefix = fmt.Sprintf("%s is not set in %s", EnvKey, o.notSetIn)
	}
	if js.set {
		res.AWSVPCBlockIMDS = js.value
		res.Source = js.path
		res.RawValue = js.raw
		res.Reason = fmt.Sprintf("%s, so %s=%s %s applies", prefix, JSONKey, js.raw, js.loc().where())
		return res
	}
	res.Source = SourceDefault
	if winner == nil {
		if js.present {
			prefix += fmt.Sprintf(" and %s does not set %s", js.path, JSONKey)
		} else {
			prefix += fmt.Sprintf(" and %s does not exist", js.path)
		}
	}
	res.Reason = prefix + ", so the default false applies"
	return res
}

func sortFindings(fs []Finding, order []string) {
	rank := func(p string) int {
		for i, o := range order {
			if o == p {
				return i
			}
		}
		return len(order)
	}
	sort.SliceStable(fs, func(i, j int) bool {
		ri, rj := rank(fs[i].File), rank(fs[j].File)
		if ri != rj {
			return ri < rj
		}
		return fs[i].Line < fs[j].Line
	})
}
