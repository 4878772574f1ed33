package firewall

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// TestEnsureAnotherWriterBetweenReadAndWrite: firewalld and Docker delete
// and re-create chains while a repair runs (seen on Docker 28.5 under
// firewalld: an ip6tables-restore naming a DOCKER-USER deleted since the
// read). One Ensure must still end enforced, with one of each of our rules,
// and never flush an operator's rules in a DOCKER-USER it read.
func TestEnsureAnotherWriterBetweenReadAndWrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		drift func(f *Fake)
		// between runs before the first restore of the repair only.
		between func(f *Fake)
	}{
		{
			name: "DOCKER-USER deleted before our jump into it is put back",
			drift: func(f *Fake) {
				f.Flush(Forward)
				f.Flush(DockerUser)
			},
			between: func(f *Fake) {
				f.Flush(DockerUser)
				must(t, f.DeleteChain(DockerUser))
			},
		},
		{
			name:    "everything wiped before the jump into DOCKER-USER is put back",
			drift:   func(f *Fake) { f.Flush(DockerUser) },
			between: func(f *Fake) { f.Reset() },
		},
		{
			name:  "IMDS-GUARD deleted before the jump to it is put back",
			drift: func(f *Fake) { f.Flush(DockerUser) },
			between: func(f *Fake) {
				f.deleteAll(Forward, jumpRule(Forward, Chain))
				f.Flush(Chain)
				must(t, f.DeleteChain(Chain))
			},
		},
		{
			name:  "DOCKER-USER created by Docker after a read found none",
			drift: func(f *Fake) { f.Reset() },
			between: func(f *Fake) {
				must(t, f.NewChain(Table, DockerUser))
				must(t, f.Append(DockerUser, "-j", "RETURN"))
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, fakes := newFakeManager(ActionDrop)
			for _, f := range fakes {
				dockerRuleset(t, f)
			}
			if _, err := m.Ensure(context.Background()); err != nil {
				t.Fatal(err)
			}
			f := fakes[IPv4]
			tc.drift(f)
			first := true
			f.BeforeRestore = func(f *Fake) {
				if first {
					first = false
					tc.between(f)
				}
			}
			states, err := m.Ensure(context.Background())
			if err != nil || !states[0].Enforced {
				t.Fatalf("Ensure: enforced %v, %v\n%s", states[0].Enforced, err, f.Dump())
			}
			if first {
				t.Fatal("the repair wrote nothing")
			}
			assertProtected(t, f)
			o := parseSave(must1(f.Save(Table)))
			if want := m.Spec().Rules(IPv4); !slices.Equal(o.guard, want) {
				t.Errorf("IMDS-GUARD = %q, want %q", o.guard, want)
			}
		})
	}
}

// TestRepairKeepsOperatorRules: a DOCKER-USER the read found is never
// declared (a ":CHAIN" line would flush it), whatever else the repair
// rebuilds in the same transaction.
func TestRepairKeepsOperatorRules(t *testing.T) {
	m, fakes := newFakeManager(ActionDrop)
	f := fakes[IPv4]
	dockerRuleset(t, f)
	dockerRuleset(t, fakes[IPv6])
	must(t, f.Insert(Table, DockerUser, 1, "-s", "10.9.9.9/32", "-j", "DROP"))
	f.Flush(Forward)
	var payloads []string
	f.BeforeRestore = nil
	tables := m.tables[IPv4]
	m.tables[IPv4] = recordingTables{tables, &payloads}
	states, err := m.Ensure(context.Background())
	if err != nil || !states[0].Enforced {
		t.Fatalf("Ensure: %v", err)
	}
	for _, p := range payloads {
		if strings.Contains(p, ":"+DockerUser+" ") {
			t.Errorf("a repair declared the existing %s:\n%s", DockerUser, p)
		}
	}
	o := parseSave(must1(f.Save(Table)))
	want := []string{jumpRule(DockerUser, Chain), "-A DOCKER-USER -s 10.9.9.9/32 -j DROP", "-A DOCKER-USER -j RETURN"}
	if !slices.Equal(o.dockerUser, want) {
		t.Errorf("DOCKER-USER = %q, want %q", o.dockerUser, want)
	}
}

type recordingTables struct {
	Tables
	payloads *[]string
}

func (r recordingTables) Restore(p []byte) error {
	*r.payloads = append(*r.payloads, string(p))
	return r.Tables.Restore(p)
}

// beforeFirstRestore runs fn once, before the first Restore through it.
type beforeFirstRestore struct {
	Tables
	fn func()
}

func (b *beforeFirstRestore) Restore(p []byte) error {
	if b.fn != nil {
		b.fn()
		b.fn = nil
	}
	return b.Tables.Restore(p)
}
