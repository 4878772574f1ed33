package sandbox

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Process is a long-running program started inside a sandbox namespace.
// Its stdout and stderr go to a log file under the sandbox directory.
type Process struct {
	Name    string
	LogPath string

	cmd      *exec.Cmd
	logf     *os.File
	done     chan struct{}
	waitErr  error
	stopOnce sync.Once
}

// startIn starts bin via nsenter in the network namespace at nsPath.
// nsenter execs the program without forking, so the pid is the program's.
func startIn(dir, nsPath, name, bin string, args, env []string) (*Process, error) {
	return startArgv(dir, name, append([]string{"nsenter", "--net=" + nsPath, "--", bin}, args...), env)
}

// startArgv starts argv (a launcher that execs its program, so the pid is
// the program's) with its output in dir/name.log.
func startArgv(dir, name string, argv, env []string) (*Process, error) {
	logPath := filepath.Join(dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdout = lf
	cmd.Stderr = lf
	// Own process group, so a ^C to the test binary does not race Close.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, logf: lf, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and its wait error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Log returns everything the process has written so far.
func (p *Process) Log() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", p.LogPath, err)
	}
	return string(b)
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns once
// the process is gone; calling it again is a no-op.
func (p *Process) Stop(grace time.Duration) error {
	var err error
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(grace):
		}
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			err = fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.Pid())
		}
	})
	return err
}
