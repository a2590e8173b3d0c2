package host

import (
	"bufio"
	"errors"
	"strings"
	"testing"
)

func TestParseCgroup2Mount(t *testing.T) {
	hybrid := `25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
41 35 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
42 35 0:39 / /sys/fs/cgroup/net_cls rw shared:11 - cgroup cgroup rw,net_cls
`
	if got, err := parseCgroup2Mount(bufio.NewScanner(strings.NewReader(hybrid))); err != nil || got != "/sys/fs/cgroup/unified" {
		t.Fatalf("hybrid: %q %v", got, err)
	}
	// Optional fields before the separator, and an escaped space.
	odd := `41 35 0:38 / /mnt/my\040cgroup rw shared:10 master:3 - cgroup2 none rw` + "\n"
	if got, err := parseCgroup2Mount(bufio.NewScanner(strings.NewReader(odd))); err != nil || got != "/mnt/my cgroup" {
		t.Fatalf("odd: %q %v", got, err)
	}
	v1only := `42 35 0:39 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu` + "\n"
	if _, err := parseCgroup2Mount(bufio.NewScanner(strings.NewReader(v1only))); !errors.Is(err, ErrNoCgroup2) {
		t.Fatalf("v1 only: %v", err)
	}
}
