package host

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoCgroup2 means no cgroup v2 hierarchy is mounted.
var ErrNoCgroup2 = errors.New("no cgroup v2 mount found in /proc/self/mountinfo")

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted. Hybrid
// hosts mount it at /sys/fs/cgroup/unified, unified ones at /sys/fs/cgroup;
// neither is assumed.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	return parseCgroup2Mount(bufio.NewScanner(f))
}

func parseCgroup2Mount(sc *bufio.Scanner) (string, error) {
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source super
		fields := strings.Fields(sc.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && i >= 4 {
				if fields[i+1] == "cgroup2" {
					return unescapeMount(fields[4]), nil
				}
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", ErrNoCgroup2
}

// unescapeMount undoes the octal escapes mountinfo uses for spaces and such.
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ResolveCgroup turns a cgroup given by the user (empty: the root; relative:
// below the v2 mount; absolute: as is, and it must be inside the v2 mount)
// into an absolute directory.
func ResolveCgroup(path string) (string, error) {
	mnt, err := Cgroup2Mount()
	if err != nil {
		return "", err
	}
	if path == "" {
		return mnt, nil
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(mnt, path)
	}
	path = filepath.Clean(path)
	if path != mnt && !strings.HasPrefix(path, mnt+"/") {
		return "", fmt.Errorf("cgroup %s is not inside the cgroup v2 mount %s", path, mnt)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("cgroup %s: %w", path, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("cgroup %s is not a directory", path)
	}
	return path, nil
}

// IsBPFFS reports whether dir is on a bpf filesystem.
func IsBPFFS(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, err
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
}

// EnsureBPFFS makes dir a directory on a bpf filesystem: it creates it
// inside an existing bpffs, or mounts a bpffs where none is. It reports
// whether it mounted one.
func EnsureBPFFS(dir string) (mounted bool, err error) {
	dir = filepath.Clean(dir)
	anc := dir
	for {
		if _, err := os.Stat(anc); err == nil {
			break
		}
		parent := filepath.Dir(anc)
		if parent == anc {
			return false, fmt.Errorf("bpffs %s: no existing ancestor", dir)
		}
		anc = parent
	}
	if ok, err := IsBPFFS(anc); err != nil {
		return false, fmt.Errorf("bpffs %s: %w", anc, err)
	} else if ok {
		return false, os.MkdirAll(dir, 0o700)
	}
	// Not on bpffs. Mount one at dir if dir can be created here (a normal
	// filesystem), else at the ancestor (e.g. /sys/fs/bpf, which sysfs
	// provides as an empty directory to mount on).
	target := anc
	if err := os.MkdirAll(dir, 0o700); err == nil {
		target = dir
	}
	if err := unix.Mount("bpf", target, "bpf", 0, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount bpffs at %s: %w", target, err)
	}
	if target != dir {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return true, err
		}
	}
	return true, nil
}

// ReleaseBPFFS undoes EnsureBPFFS for dir once nothing is pinned in it any
// more: a bpffs mounted on dir itself is unmounted and dir removed. A dir
// inside a shared bpffs (e.g. /sys/fs/bpf/sockmesh) is only removed.
func ReleaseBPFFS(dir string) error {
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return err
	}
	if st.Dev != parent.Dev {
		if ok, _ := IsBPFFS(dir); ok {
			if err := unix.Unmount(dir, 0); err != nil {
				return fmt.Errorf("unmount bpffs %s: %w", dir, err)
			}
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}
