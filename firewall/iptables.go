package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// lockWait bounds how long one iptables call waits for the xtables lock, so a
// stuck holder delays a sync instead of hanging the loop forever.
const lockWait = 5

// execTables is the real Tables: go-iptables for single-rule changes, and the
// matching -save/-restore binaries for snapshots and atomic chain rebuilds.
type execTables struct {
	*iptables.IPTables
	family        Family
	legacy        bool
	save, restore string
}

// newExecTables binds one family to one iptables binary ("iptables",
// "ip6tables-legacy", …); its -save and -restore siblings are named after it.
func newExecTables(f Family, bin string, legacy bool) (*execTables, error) {
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(bin), iptables.Timeout(lockWait))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	t := &execTables{IPTables: ipt, family: f, legacy: legacy}
	for _, p := range []struct {
		dst  *string
		name string
	}{{&t.save, saveName(bin)}, {&t.restore, restoreName(bin)}} {
		path, err := exec.LookPath(p.name)
		if err != nil {
			return nil, fmt.Errorf("finding %s: %w", p.name, err)
		}
		*p.dst = path
	}
	return t, nil
}

// saveName maps "iptables-nft" to "iptables-nft-save" and "iptables" to
// "iptables-save": the multi-call binaries dispatch on these names.
func saveName(bin string) string    { return bin + "-save" }
func restoreName(bin string) string { return bin + "-restore" }

// runTimeout bounds a save or restore call (they take the lock like iptables).
const runTimeout = 15 * time.Second

// runWaitDelay bounds the wait for output after the process is killed: a
// child that inherited the pipes must not hold Wait forever.
const runWaitDelay = time.Second

// Save dumps one table, or with "" every table in one process. Save and
// Restore are called through Tables, which carries no context; runTimeout
// bounds them, and a stopping process exits regardless (cmd/).
func (t *execTables) Save(table string) ([]byte, error) {
	if table == "" {
		// Every table that exists, in one process. Neither flavour creates
		// a table to dump all of them (legacy reads ip_tables_names).
		return run(context.Background(), t.save, nil, "-c")
	}
	if t.legacy {
		exists, err := legacyTableExists(t.family, table)
		if err != nil {
			return nil, err
		}
		if !exists {
			// iptables-legacy-save would create the table to list it; with
			// no table the kernel filters nothing, which is what an empty
			// table says too.
			return []byte("*" + table + "\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"), nil
		}
	}
	return run(context.Background(), t.save, nil, "-c", "-t", table)
}

// legacyTableExists reports whether the legacy (x_tables) table exists in
// this thread's network namespace. Listing a legacy table with
// iptables-legacy(-save) creates it (and loads its module), after which every
// iptables-nft call warns "iptables-legacy tables present"; the names file
// only reads. It is absent while the ip_tables module is not loaded, which
// also means no table.
func legacyTableExists(f Family, table string) (bool, error) {
	name := "/proc/thread-self/net/ip_tables_names"
	if f == IPv6 {
		name = "/proc/thread-self/net/ip6_tables_names"
	}
	b, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return slices.Contains(strings.Fields(string(b)), table), nil
}

func (t *execTables) Restore(payload []byte) error {
	_, err := run(context.Background(), t.restore, payload, "--noflush", "-w", fmt.Sprint(lockWait))
	return err
}

// run execs bin until it exits, ctx ends or runTimeout passes; a killed
// iptables-restore commits nothing, so the rules in force stay.
func run(ctx context.Context, bin string, stdin []byte, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = runWaitDelay
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return nil, fmt.Errorf("%s %s: %w", bin, strings.Join(args, " "), err)
		}
		return nil, fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// Backend is the iptables flavour that holds Docker's rules.
type Backend struct {
	// Mode is "nft" or "legacy".
	Mode string `json:"mode"`
	// Binaries maps each family to the iptables binary used for it.
	Binaries map[Family]string `json:"binaries"`
	// Why says how the mode was chosen, for status and logs.
	Why string `json:"why"`
}

// BackendModes are the values --iptables-backend accepts.
var BackendModes = []string{"auto", "nft", "legacy"}

// DetectBackend picks the iptables flavour. Rules written with the other
// flavour than Docker's are invisible to it and fail open, so "auto" looks for
// Docker's chains in each flavour, and otherwise follows the `iptables` on
// PATH, which is the one dockerd itself will use.
func DetectBackend(want string) (Backend, error) {
	plainMode, plainErr := binaryMode("iptables")
	if want != "auto" && want != "nft" && want != "legacy" {
		return Backend{}, fmt.Errorf("invalid iptables backend %q: want one of %s", want, strings.Join(BackendModes, ", "))
	}
	mode, why := want, "set by --iptables-backend"
	if want == "auto" {
		var holders []string
		for _, m := range []string{"nft", "legacy"} {
			if hasDockerChains("iptables-" + m) {
				holders = append(holders, m)
			}
		}
		switch {
		case len(holders) == 1:
			mode, why = holders[0], "Docker's chains are in iptables-"+holders[0]
		case plainErr != nil:
			return Backend{}, fmt.Errorf("no usable iptables: %w", plainErr)
		default:
			mode, why = plainMode, "iptables on PATH is iptables-"+plainMode
			if len(holders) == 2 {
				why += "; Docker's chains are in both"
			}
		}
	}
	b := Backend{Mode: mode, Why: why, Binaries: map[Family]string{}}
	// Prefer the plain names when they are the chosen flavour: they exist on
	// every distribution, while the -nft/-legacy names are a Debian/Fedora
	// convention.
	for _, f := range []Family{IPv4, IPv6} {
		base := "iptables"
		if f == IPv6 {
			base = "ip6tables"
		}
		if plainErr == nil && plainMode == mode {
			b.Binaries[f] = base
		} else {
			b.Binaries[f] = base + "-" + mode
		}
	}
	if _, err := exec.LookPath(b.Binaries[IPv4]); err != nil {
		return b, fmt.Errorf("iptables backend %s: %w", mode, err)
	}
	return b, nil
}

// binaryMode runs `bin --version` and returns "nft" or "legacy".
func binaryMode(bin string) (string, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return "", err
	}
	out, err := run(context.Background(), path, nil, "--version")
	if err != nil {
		return "", err
	}
	switch s := string(out); {
	case strings.Contains(s, "nf_tables"):
		return "nft", nil
	case strings.Contains(s, "legacy"), strings.HasPrefix(s, "iptables v1.4"), strings.HasPrefix(s, "iptables v1.6"):
		// Before 1.8 there was only the legacy flavour, and no "(legacy)" tag.
		return "legacy", nil
	}
	return "", fmt.Errorf("%s: cannot tell nft from legacy in %q", bin, strings.TrimSpace(string(out)))
}

// hasDockerChains reports whether bin's filter table has Docker's chains,
// creating nothing: a legacy table that does not exist is not listed.
func hasDockerChains(bin string) bool {
	if strings.HasSuffix(bin, "-legacy") {
		if ok, err := legacyTableExists(IPv4, Table); err != nil || !ok {
			return false
		}
	}
	path, err := exec.LookPath(saveName(bin))
	if err != nil {
		return false
	}
	out, err := run(context.Background(), path, nil, "-t", Table)
	if err != nil {
		return false
	}
	for _, c := range parseSave(out).chains {
		if c == "DOCKER" || c == DockerUser || strings.HasPrefix(c, "DOCKER-") {
			return true
		}
	}
	return false
}

// NewManagerFor builds a Manager on the real iptables of backend b.
func NewManagerFor(b Backend, spec Spec, families ...Family) (*Manager, error) {
	tables := map[Family]Tables{}
	var errs []error
	for _, f := range families {
		t, err := newExecTables(f, b.Binaries[f], b.Mode == "legacy")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tables[f] = t
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return NewManager(spec, tables, families...), nil
}
