// Command imdsguard keeps containers on an ECS container instance away from
// the EC2 instance metadata service. This file only parses the command line;
// the work is in agent/, firewall/ and ecsconfig/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// Exit codes shared by the one-shot commands.
const (
	exitOK      = 0
	exitProblem = 1 // ran, and the host is not protected / the rules are not in place
	exitError   = 2 // could not do or check what was asked
)

var commands = map[string]command{
	"run":     {"run the daemon: enforce, repair drift, serve status and metrics", cmdRun},
	"apply":   {"enforce once; exit 0 when the rules are in place", cmdApply},
	"check":   {"report whether this host is protected, changing nothing (exit 0 protected, 1 not, 2 could not check)", cmdCheck},
	"status":  {"ask the running daemon for its status", cmdStatus},
	"remove":  {"delete imdsguard's rules (the daemon must be stopped)", cmdRemove},
	"version": {"print the version", cmdVersion},

	"userdata": {"print EC2 user data that installs imdsguard and runs it before dockerd", cmdUserdata},
}

// stopLimit is how long any command may take to return after SIGTERM or
// SIGINT. Every read and exec has its own deadline; this is the backstop
// for one that does not (a goroutine blocked opening a FIFO cannot be
// cancelled). Exiting leaves every rule in place.
const stopLimit = 4500 * time.Millisecond

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	exited := make(chan struct{})
	go func() {
		select {
		case <-exited:
		case <-ctx.Done():
			time.Sleep(stopLimit)
			fmt.Fprintf(os.Stderr, "imdsguard: still running %v after the stop signal; exiting (rules left in place)\n", stopLimit)
			os.Exit(exitError)
		}
	}()
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	close(exited)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitError
		}
		return exitOK
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "imdsguard: unknown command %q (see imdsguard --help)\n", args[0])
		return exitError
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "imdsguard %s: keep containers away from the EC2 instance metadata service\n\nCommands:\n", version)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'imdsguard COMMAND -h' for a command's flags; each flag can also be set as IMDSGUARD_<FLAG>.")
}

func cmdVersion(_ context.Context, _ []string, stdout, _ io.Writer) int {
	fmt.Fprintln(stdout, version)
	return exitOK
}

// fail prints the one line an operator needs and returns the exit code.
func fail(stderr io.Writer, cmd string, err error) int {
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	fmt.Fprintf(stderr, "imdsguard %s: %s\n", cmd, msg)
	return exitError
}

// parse parses flags, turning -h into exit 0 and bad flags into exit 2.
func parse(fs *flag.FlagSet, args []string) (done bool, code int) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, exitOK
		}
		return true, exitError
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "imdsguard %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return true, exitError
	}
	return false, 0
}
