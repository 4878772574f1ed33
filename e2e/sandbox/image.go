package sandbox

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// importImage builds a rootfs tarball from the static busybox (plus applet
// symlinks) and docker-imports it: no registry is needed.
func (s *Sandbox) importImage(ctx context.Context) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("sandbox: busybox: %w", err)
	}
	out, err := exec.CommandContext(ctx, bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("sandbox: busybox --list: %w", err)
	}
	tarPath := filepath.Join(s.Dir, "busybox.tar")
	if err := writeRootfs(tarPath, bb, strings.Fields(string(out))); err != nil {
		return err
	}
	if _, err := s.dockerCtx(ctx, 60*time.Second, "import", "--change", `CMD ["sh"]`, tarPath, Image); err != nil {
		return err
	}
	return nil
}

func writeRootfs(path, busybox string, applets []string) error {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	now := time.Now()
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode, ModTime: now}); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin)), ModTime: now}); err != nil {
		return err
	}
	if _, err := tw.Write(bin); err != nil {
		return err
	}
	for _, a := range applets {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", ModTime: now}); err != nil {
			return err
		}
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\n"
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd)), ModTime: now}); err != nil {
		return err
	}
	if _, err := tw.Write([]byte(passwd)); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}
