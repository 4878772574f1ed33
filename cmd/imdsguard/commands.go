package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/agent/hostlock"
	"github.com/imdsguard/imdsguard/firewall"
)

// oneShotWait is how long a command waits for a one-shot apply or remove
// that holds the lock; a daemon holding it is refused at once.
const oneShotWait = 30 * time.Second

// setup parses the shared flags plus the command's own and builds the
// logger. extra registers command-specific flags.
func setup(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (*agent.Config, *logrus.Entry, bool, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &agent.Config{}
	cfg.Bind(fs)
	if extra != nil {
		extra(fs)
	}
	if done, code := parse(fs, args); done {
		return nil, nil, true, code
	}
	if err := cfg.Finish(fs, os.Getenv); err != nil {
		return nil, nil, true, fail(stderr, name, err)
	}
	log, err := newLogger(cfg.LogFormat, cfg.LogLevel, stderr)
	if err != nil {
		return nil, nil, true, fail(stderr, name, err)
	}
	return cfg, log.WithField("cmd", name), false, 0
}

func newLogger(format, level string, out io.Writer) (*logrus.Logger, error) {
	l := logrus.New()
	l.SetOutput(out)
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: %w", level, err)
	}
	l.SetLevel(lv)
	if format == "json" || format == "auto" && !isTerminal(out) {
		l.SetFormatter(&logrus.JSONFormatter{})
	} else {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
	return l, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// requireNetAdmin fails early, with one line, where iptables would fail
// later with a confusing message. It checks the capability, not uid 0, so a
// unit that grants only CAP_NET_ADMIN works.
func requireNetAdmin() error {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return nil // cannot tell; let iptables speak
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err == nil && caps&(1<<unix.CAP_NET_ADMIN) == 0 {
				return errors.New("needs root (CAP_NET_ADMIN) to read and change iptables")
			}
		}
	}
	return nil
}

func newAgent(cfg *agent.Config, log *logrus.Entry, hooks agent.Hooks) (*agent.Agent, error) {
	return newAgentWith(cfg, log, hooks, agent.RealFirewall(*cfg))
}

func newAgentWith(cfg *agent.Config, log *logrus.Entry, hooks agent.Hooks, fw agent.FirewallFactory) (*agent.Agent, error) {
	d, err := agent.NewDocker(cfg.DockerHost, log.WithField("component", "docker"))
	if err != nil {
		return nil, err
	}
	return agent.New(agent.Options{
		Config: *cfg, Log: log, Firewall: fw, Docker: d, Hooks: hooks,
		Version: version, WatchNFTables: firewall.WatchNFTables, WatchFirewalld: firewall.WatchFirewalld, NFTables: agent.RealNFT(*cfg),
	}), nil
}

func cmdRun(ctx context.Context, args []string, _, stderr io.Writer) int {
	cfg, log, done, code := setup("run", args, stderr, nil)
	if done {
		return code
	}
	if err := requireNetAdmin(); err != nil {
		return fail(stderr, "run", err)
	}
	lock, err := hostlock.Acquire(ctx, hostlock.DefaultDir, hostlock.RoleDaemon, oneShotWait)
	if err != nil {
		return fail(stderr, "run", err)
	}
	defer lock.Release()
	a, err := newAgent(cfg, log, systemdHooks(log))
	if err != nil {
		return fail(stderr, "run", err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: re-detecting the iptables backend and resyncing")
				a.Redetect()
			}
		}
	}()
	if err := a.Run(ctx); err != nil {
		return fail(stderr, "run", err)
	}
	return exitOK
}

func cmdApply(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	cfg, log, done, code := setup("apply", args, stderr, jsonFlag(&asJSON))
	if done {
		return code
	}
	if err := requireNetAdmin(); err != nil {
		return fail(stderr, "apply", err)
	}
	lock, err := hostlock.Acquire(ctx, hostlock.DefaultDir, "apply", oneShotWait)
	if err != nil {
		return fail(stderr, "apply", err)
	}
	defer lock.Release()
	a, err := newAgent(cfg, log, agent.Hooks{})
	if err != nil {
		return fail(stderr, "apply", err)
	}
	st, err := a.Once(ctx, true)
	printStatus(stdout, st, asJSON)
	inPlace := st.Firewall.IPv4.Enforced && (!cfg.IPv6 || st.Firewall.IPv6.Enforced)
	if !inPlace {
		if err == nil {
			err = errors.New("the IMDS block is not in place")
		}
		return fail(stderr, "apply", err)
	}
	if st.ECSConfig.WriteFailed {
		// Asked to write ECS_AWSVPC_BLOCK_IMDS=true and could not: awsvpc
		// tasks stay exposed, so the boot script must know.
		return fail(stderr, "apply", fmt.Errorf("rules in place, but %s", st.ECSConfig.Error))
	}
	if err != nil {
		// The rules are in place; what failed is reporting (ECS config,
		// Docker). Say so, but the boot can go on.
		fmt.Fprintf(stderr, "imdsguard apply: rules in place; %s\n", err)
	}
	return exitOK
}

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	cfg, log, done, code := setup("check", args, stderr, jsonFlag(&asJSON))
	if done {
		return code
	}
	fw := agent.RealFirewall(*cfg)
	capErr := requireNetAdmin()
	if capErr != nil {
		// Still report what can be read without privileges: the ECS
		// configuration is often the question.
		fw = func() (agent.Firewall, firewall.Backend, error) { return nil, firewall.Backend{}, capErr }
	}
	a, err := newAgentWith(cfg, log, agent.Hooks{}, fw)
	if err != nil {
		return fail(stderr, "check", err)
	}
	st, err := a.Once(ctx, false)
	printStatus(stdout, st, asJSON)
	if err != nil {
		return fail(stderr, "check", err)
	}
	return st.ExitCode()
}

// jsonFlag registers --json for the commands that print a status.
func jsonFlag(asJSON *bool) func(*flag.FlagSet) {
	return func(fs *flag.FlagSet) { fs.BoolVar(asJSON, "json", false, "print the status as JSON") }
}

func printStatus(w io.Writer, st *agent.Status, asJSON bool) {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
		return
	}
	st.WriteText(w)
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var asJSON bool
	cfg, _, done, code := setup("status", args, stderr, jsonFlag(&asJSON))
	if done {
		return code
	}
	st, err := agent.QueryStatus(ctx, cfg.StatusSocket)
	if err != nil {
		return fail(stderr, "status", err)
	}
	printStatus(stdout, st, asJSON)
	return st.ExitCode()
}

func cmdRemove(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, log, done, code := setup("remove", args, stderr, nil)
	if done {
		return code
	}
	if err := requireNetAdmin(); err != nil {
		return fail(stderr, "remove", err)
	}
	// A running daemon would put the rules straight back. The lock names
	// it; the socket also finds one that sees another /run.
	lock, err := hostlock.Acquire(ctx, hostlock.DefaultDir, "remove", oneShotWait)
	if err != nil {
		return fail(stderr, "remove", fmt.Errorf("%w: stop it first (systemctl stop imdsguard)", err))
	}
	defer lock.Release()
	if _, err := agent.QueryStatus(ctx, cfg.StatusSocket); err == nil {
		return fail(stderr, "remove", fmt.Errorf("the daemon is running (it answers on %s): stop it first (systemctl stop imdsguard)", cfg.StatusSocket))
	}
	b, err := firewall.DetectBackend(cfg.IPTablesBackend)
	if err != nil {
		return fail(stderr, "remove", err)
	}
	// Both families, whatever --ipv6 says now: an earlier run may have set
	// up IPv6.
	m, err := firewall.NewManagerFor(b, firewall.Spec{Action: cfg.Action}, firewall.IPv4, firewall.IPv6)
	if err != nil {
		return fail(stderr, "remove", err)
	}
	if err := errors.Join(m.Remove(ctx), firewall.RemoveNFT(ctx, 0)); err != nil {
		return fail(stderr, "remove", err)
	}
	log.WithField("backend", b.Mode).Info("removed the IMDS-GUARD chain, its jumps and the imdsguard nftables tables; containers can reach IMDS again")
	fmt.Fprintln(stdout, "removed")
	return exitOK
}
