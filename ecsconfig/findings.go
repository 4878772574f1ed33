package ecsconfig

import (
	"fmt"
	"strings"
)

// Reading ecs.config lines as ecs-init does, and the near misses an
// operator would want to hear about.

// scanEnvFile parses one file the way ecs-init does and returns the
// assignments to EnvKey in file order plus near-miss findings. Splitting the
// untrimmed content keeps real line numbers; it yields the same pairs as
// ecs-init's trim-then-split because the extra lines are blank.
func scanEnvFile(f File) ([]assignment, []Finding) {
	if !f.Present {
		return nil, nil
	}
	var out []assignment
	var findings []Finding
	for i, line := range strings.Split(f.Content, "\n") {
		loc := location{file: f.Path, line: i + 1}
		key, val, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			if kind, near := nearMissNoEquals(key); near {
				findings = append(findings, keyFinding(loc, key, kind, "ecs-init"))
			}
			continue
		}
		if key == EnvKey {
			out = append(out, assignment{loc: loc, raw: val})
			continue
		}
		if kind, near := nearMissKey(key); near {
			findings = append(findings, keyFinding(loc, key, kind, "ecs-init"))
		}
	}
	return out, findings
}

// nearMissKey reports whether key was probably meant to be EnvKey.
func nearMissKey(key string) (string, bool) {
	s := strings.TrimSpace(key)
	commented := strings.HasPrefix(s, "#") || strings.HasPrefix(s, ";")
	s = strings.TrimSpace(strings.TrimLeft(s, "#; \t"))
	exported := false
	if rest, ok := strings.CutPrefix(s, "export"); ok && rest != strings.TrimLeft(rest, " \t") {
		exported = true
		s = strings.TrimSpace(rest)
	}
	switch {
	case s == EnvKey && commented:
		return KindCommentedOut, true
	case s == EnvKey && exported:
		return KindExportPrefix, true
	case s == EnvKey:
		return KindSpacesAroundEquals, true
	case strings.EqualFold(s, EnvKey) && commented:
		return KindCommentedOut, true
	case strings.EqualFold(s, EnvKey):
		return KindWrongCase, true
	}
	return "", false
}

// nearMissNoEquals catches "ECS_AWSVPC_BLOCK_IMDS true" and "...: true".
func nearMissNoEquals(line string) (string, bool) {
	s := strings.TrimLeft(line, "#; \t")
	s = strings.TrimPrefix(s, "export ")
	if len(s) >= len(EnvKey) && strings.EqualFold(s[:len(EnvKey)], EnvKey) {
		return KindNoEquals, true
	}
	return "", false
}

func keyFinding(loc location, key, kind, who string) Finding {
	var msg string
	switch kind {
	case KindCommentedOut:
		msg = fmt.Sprintf("commented-out assignment %s has no effect (the variable name is %q, which the ECS agent ignores)", loc.where(), key)
	case KindExportPrefix:
		msg = fmt.Sprintf("%s does not understand 'export': the variable name %s is %q, which the ECS agent ignores", who, loc.where(), key)
	case KindSpacesAroundEquals:
		msg = fmt.Sprintf("spaces around '=' %s: %s keeps them, so the variable name is %q, which the ECS agent ignores", loc.where(), who, key)
	case KindWrongCase:
		msg = fmt.Sprintf("variable names are case-sensitive: %q %s is not %s, so the ECS agent ignores it", key, loc.where(), EnvKey)
	case KindNoEquals:
		msg = fmt.Sprintf("the line %s mentions %s but has no '=', so ecs-init skips it", loc.where(), EnvKey)
	}
	return Finding{File: loc.file, Line: loc.line, Kind: kind, Message: msg}
}

// overrideFindings reports every assignment in one file that loses to winner.
func overrideFindings(as []assignment, winner *assignment) []Finding {
	if len(as) == 0 {
		return nil
	}
	last := as[len(as)-1]
	var out []Finding
	for _, a := range as {
		switch {
		case a.loc != last.loc:
			out = append(out, Finding{
				File: a.loc.file, Line: a.loc.line, Kind: KindDuplicate,
				Message: fmt.Sprintf("%s=%s %s is overridden by a later assignment at %s (ecs-init keeps the last one)", EnvKey, a.raw, a.loc.where(), last.loc),
			})
		case winner != nil && a.loc != winner.loc:
			out = append(out, Finding{
				File: a.loc.file, Line: a.loc.line, Kind: KindOverriddenByEtc,
				Message: fmt.Sprintf("%s=%s %s is overridden by %s (ecs-init reads %s after %s)", EnvKey, a.raw, a.loc.where(), winner.loc, winner.loc.file, a.loc.file),
			})
		}
	}
	return out
}
