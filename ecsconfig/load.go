package ecsconfig

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// hostPath maps an in-host path under the --host-root directory ("" or "/"
// for the current root).
func hostPath(hostRoot, p string) string {
	if hostRoot == "" {
		hostRoot = "/"
	}
	return filepath.Join(hostRoot, p)
}

// Load reads the three files under hostRoot. A missing file is normal and
// gives Present=false; any other read failure is an error naming the file.
// The returned Inputs carry in-host display paths and whatever was readable.
func Load(hostRoot string) (Inputs, error) {
	var errs []error
	read := func(display string) File {
		f := File{Path: display}
		b, err := os.ReadFile(hostPath(hostRoot, display))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			errs = append(errs, fmt.Errorf("ecsconfig: reading %s: %w", display, err))
		default:
			f.Present, f.Content = true, string(b)
		}
		return f
	}
	in := Inputs{
		InstanceConfig: read(InstanceConfigPath),
		UserConfig:     read(UserConfigPath),
		JSONConfig:     read(JSONConfigPath),
	}
	return in, errors.Join(errs...)
}
