package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/imdsguard/imdsguard/agent"
	"github.com/imdsguard/imdsguard/agent/hostlock"
	"github.com/imdsguard/imdsguard/status"
)

// oneShotWait is how long a command waits for a one-shot apply or remove
// that holds the lock; a daemon holding it is refused at once.
const oneShotWait = 30 * time.Second

// setup parses the settings flags plus the command's own, and builds the
// logger. extra registers command-specific flags. Every settings flag is
// accepted; -h lists only those in reads (all when empty), --config and
// the command's own.
func setup(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet), reads ...string) (*agent.Config, *logrus.Entry, bool, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &agent.Config{}
	cfg.Bind(fs)
	shown := map[string]bool{"config": true}
	for _, n := range reads {
		shown[n] = true
	}
	fs.VisitAll(func(f *flag.Flag) { shown[f.Name] = shown[f.Name] || len(reads) == 0 })
	if extra != nil {
		extra(fs)
	}
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := shown[f.Name]; !ok {
			shown[f.Name] = true // the command's own
		}
	})
	fs.Usage = func() { usageOf(fs, shown) }
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

// usageOf prints the flags of fs that shown marks.
func usageOf(fs *flag.FlagSet, shown map[string]bool) {
	vis := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	vis.SetOutput(fs.Output())
	fs.VisitAll(func(f *flag.Flag) {
		if shown[f.Name] {
			vis.Var(f.Value, f.Name, f.Usage)
		}
	})
	fmt.Fprintf(fs.Output(), "Usage of imdsguard %s:\n", fs.Name())
	vis.PrintDefaults()
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

func newAgent(cfg *agent.Config, log *logrus.Entry, hooks agent.Hooks) (*agent.Agent, error) {
	return agent.ForHost(*cfg, log, hooks, version, nil)
}

func cmdRun(ctx context.Context, args []string, _, stderr io.Writer) int {
	cfg, log, done, code := setup("run", args, stderr, nil)
	if done {
		return code
	}
	if err := agent.RequireNetAdmin(); err != nil {
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
	var out printFlags
	cfg, log, done, code := setup("apply", args, stderr, out.bind, agent.OneShotFlags...)
	if done {
		return code
	}
	if err := agent.RequireNetAdmin(); err != nil {
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
	out.print(stdout, st)
	if !st.BlockInPlace() {
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
	var out printFlags
	cfg, log, done, code := setup("check", args, stderr, out.bind, agent.OneShotFlags...)
	if done {
		return code
	}
	// Without privileges, still report what can be read: the ECS
	// configuration is often the question.
	a, err := agent.ForHost(*cfg, log, agent.Hooks{}, version, agent.RequireNetAdmin())
	if err != nil {
		return fail(stderr, "check", err)
	}
	st, err := a.Once(ctx, false)
	out.print(stdout, st)
	if err != nil {
		return fail(stderr, "check", err)
	}
	return st.ExitCode()
}

// printFlags are the flags of the commands that print a status.
type printFlags struct{ json, all bool }

func (p *printFlags) bind(fs *flag.FlagSet) {
	fs.BoolVar(&p.json, "json", false, "print the status as JSON")
	fs.BoolVar(&p.all, "all", false, "list every container, reason and exemption (the default fits one screen)")
}

func (p *printFlags) print(w io.Writer, st *status.Status) {
	switch {
	case p.json:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	case p.all:
		st.WriteTextAll(w)
	default:
		st.WriteText(w)
	}
}

// cmdStatus asks the daemon. Its exit code is check's, or ExitStale when
// the daemon has not verified everything recently (a hung or failing loop
// still serves its last status, which may no longer hold).
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var out printFlags
	cfg, _, done, code := setup("status", args, stderr, out.bind, agent.StatusFlags...)
	if done {
		return code
	}
	st, err := status.QueryStatus(ctx, cfg.StatusSocket)
	if err != nil {
		return fail(stderr, "status", err)
	}
	out.print(stdout, st)
	if stale, why := st.Stale(time.Now()); stale {
		fmt.Fprintf(stderr, "imdsguard status: the daemon's status is stale: %s\n", why)
		return status.ExitStale
	}
	return st.ExitCode()
}

func cmdRemove(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, log, done, code := setup("remove", args, stderr, nil, agent.RemoveFlags...)
	if done {
		return code
	}
	if err := agent.RequireNetAdmin(); err != nil {
		return fail(stderr, "remove", err)
	}
	// A running daemon would put the rules straight back. The lock names
	// it; the socket also finds one that sees another /run.
	lock, err := hostlock.Acquire(ctx, hostlock.DefaultDir, "remove", oneShotWait)
	if err != nil {
		return fail(stderr, "remove", fmt.Errorf("%w: stop it first (systemctl stop imdsguard)", err))
	}
	defer lock.Release()
	if err := agent.Remove(ctx, *cfg, log); err != nil {
		return fail(stderr, "remove", err)
	}
	fmt.Fprintln(stdout, "removed")
	return exitOK
}
