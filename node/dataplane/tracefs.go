package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sockmesh/sockmesh/bpf/sockmap"
)

// syscallTracepointIDs returns the perf ids of the syscalls:<Event>
// tracepoints of tps, read from tracefs. If tracefs is not mounted where
// the kernel documents it, it is mounted on a private directory for the
// time of the read and unmounted again: the host keeps no new mount.
func syscallTracepointIDs(tps []sockmap.Tracepoint) ([]uint64, error) {
	read := func(root string) ([]uint64, error) {
		var ids []uint64
		for _, tp := range tps {
			data, err := os.ReadFile(filepath.Join(root, "events", "syscalls", tp.Event, "id"))
			if err != nil {
				return nil, err
			}
			id, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("tracepoint id of %s: %w", tp.Event, err)
			}
			ids = append(ids, id)
		}
		return ids, nil
	}
	var errs []error
	for _, root := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		ids, err := read(root)
		if err == nil {
			return ids, nil
		}
		errs = append(errs, err)
	}
	dir, err := os.MkdirTemp("", "sockmesh-tracefs-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(dir)
	if err := unix.Mount("nodev", dir, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return nil, errors.Join(append(errs, fmt.Errorf("mount tracefs: %w", err))...)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	return read(dir)
}

// attachPerfTracepoint attaches prog to the tracepoint with perf id id,
// through a BPF link on a perf event. One event serves every CPU: a
// tracepoint runs its programs wherever it fires.
func attachPerfTracepoint(id uint64, prog *ebpf.Program) (link.Link, error) {
	attr := unix.PerfEventAttr{
		Type:        unix.PERF_TYPE_TRACEPOINT,
		Config:      id,
		Sample_type: unix.PERF_SAMPLE_RAW,
		Sample:      1,
		Wakeup:      1,
	}
	attr.Size = uint32(unsafe.Sizeof(attr))
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("perf_event_open: %w", err)
	}
	// The link holds the event; this descriptor is not needed after.
	defer unix.Close(fd)
	return link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: prog, Attach: ebpf.AttachPerfEvent})
}
