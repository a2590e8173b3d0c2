package l7

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/sockmesh/sockmesh/bpf/verifier"
)

// ProcEvent is a process of the watched cgroup tree that exec'd (Exited 0)
// or ended (Exited 1).
type ProcEvent = procsProcEvent

// ProcWatch reports process starts and ends in one cgroup tree.
type ProcWatch struct {
	objs   procsObjects
	links  []link.Link
	reader *ringbuf.Reader
}

// WatchProcs starts reporting the execs and exits of processes in the
// cgroup directory cgroup and below.
func WatchProcs(cgroup string) (_ *ProcWatch, err error) {
	spec, err := loadProcs()
	if err != nil {
		return nil, fmt.Errorf("load procs spec: %w", err)
	}
	w := &ProcWatch{}
	if err := spec.LoadAndAssign(&w.objs, nil); err != nil {
		return nil, verifier.Explain("process watch", err)
	}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	dir, err := os.Open(cgroup)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	if err := w.objs.SmProcsCgroup.Put(uint32(0), uint32(dir.Fd())); err != nil {
		return nil, fmt.Errorf("watch cgroup %s: %w", cgroup, err)
	}
	for event, prog := range map[string]*ebpf.Program{"sched_process_exec": w.objs.SmProcsExec, "sched_process_exit": w.objs.SmProcsExit} {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: event, Program: prog})
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", event, err)
		}
		w.links = append(w.links, l)
	}
	if w.reader, err = ringbuf.NewReader(w.objs.SmProcsEvents); err != nil {
		return nil, err
	}
	return w, nil
}

// Read waits for the next event; it fails once Close was called.
func (w *ProcWatch) Read() (ProcEvent, error) {
	var e ProcEvent
	rec, err := w.reader.Read()
	if err != nil {
		return e, err
	}
	err = binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e)
	return e, err
}

// Close detaches and releases everything.
func (w *ProcWatch) Close() error {
	if w.reader != nil {
		w.reader.Close()
	}
	for _, l := range w.links {
		l.Close()
	}
	return w.objs.Close()
}
