package gobin

import (
	"debug/buildinfo"
	"debug/elf"
	"debug/gosym"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// ErrNotGo means the file is not a Go executable.
var ErrNotGo = errors.New("not a Go executable")

// ErrNoFunc means the binary has no function of that name (not linked in).
var ErrNoFunc = errors.New("function not in binary")

// Binary is an opened Go executable.
type Binary struct {
	Path      string
	GoVersion string            // e.g. "go1.26.8"
	Module    string            // main module path
	Deps      map[string]string // module path -> version, of what it links
	elf       *elf.File
	table     *gosym.Table
	text      *elf.Section
	hasDWARF  bool
}

// Open reads path. It fails with ErrNotGo for anything but a Go ELF
// executable, and only supports x86-64 (what the RET scan decodes).
func Open(path string) (*Binary, error) {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%v)", path, ErrNotGo, err)
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	b := &Binary{Path: path, GoVersion: info.GoVersion, Module: info.Main.Path, Deps: map[string]string{}, elf: f}
	for _, d := range info.Deps {
		v := d.Version
		if d.Replace != nil {
			v = d.Replace.Version
		}
		b.Deps[d.Path] = v
	}
	if f.Machine != elf.EM_X86_64 {
		f.Close()
		return nil, fmt.Errorf("%s: %v binaries are not supported (x86-64 only)", path, f.Machine)
	}
	if b.text = f.Section(".text"); b.text == nil {
		f.Close()
		return nil, fmt.Errorf("%s: no .text section", path)
	}
	pcln := f.Section(".gopclntab")
	if pcln == nil {
		f.Close()
		return nil, fmt.Errorf("%s: no .gopclntab section", path)
	}
	data, err := pcln.Data()
	if err != nil {
		f.Close()
		return nil, err
	}
	// The pclntab alone names every function (Go 1.2+ layout); no symbol
	// table is needed, so -s binaries work.
	if b.table, err = gosym.NewTable(nil, gosym.NewLineTable(data, b.text.Addr)); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: pclntab: %w", path, err)
	}
	b.hasDWARF = f.Section(".debug_info") != nil
	return b, nil
}

// Close releases the file.
func (b *Binary) Close() error { return b.elf.Close() }

// HasDWARF reports whether the binary carries debug info (not built -w).
func (b *Binary) HasDWARF() bool { return b.hasDWARF }

// Func is one function: its address range and where it is in the file.
type Func struct {
	Name       string
	Entry, End uint64 // virtual addresses
	// Offset is the file offset of Entry, what a uprobe attaches at.
	Offset uint64
}

// Func finds a function by its full name ("net/http.serverHandler.ServeHTTP").
func (b *Binary) Func(name string) (Func, error) {
	fn := b.table.LookupFunc(name)
	if fn == nil {
		return Func{}, fmt.Errorf("%s: %w", name, ErrNoFunc)
	}
	off, err := b.fileOffset(fn.Entry)
	if err != nil {
		return Func{}, err
	}
	return Func{Name: name, Entry: fn.Entry, End: fn.End, Offset: off}, nil
}

// Funcs lists the functions whose names start with prefix.
func (b *Binary) Funcs(prefix string) []string {
	var out []string
	for _, f := range b.table.Funcs {
		if strings.HasPrefix(f.Name, prefix) {
			out = append(out, f.Name)
		}
	}
	return out
}

func (b *Binary) fileOffset(addr uint64) (uint64, error) {
	for _, p := range b.elf.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && addr >= p.Vaddr && addr < p.Vaddr+p.Memsz {
			return addr - p.Vaddr + p.Off, nil
		}
	}
	return 0, fmt.Errorf("address %#x is in no executable segment", addr)
}

// Instruction is one decoded instruction of a function.
type Instruction struct {
	Offset uint64 // file offset, for a uprobe
	Addr   uint64
	Op     x86asm.Op
	Len    int
	inst   x86asm.Inst
}

// errUndecodable is what decode says, when strict, of bytes that decode
// to no instruction.
var errUndecodable = errors.New("undecodable byte")

// Instructions decodes fn. Go pads functions with INT3; decoding stops at
// the function's end.
func (b *Binary) Instructions(fn Func) ([]Instruction, error) { return b.decode(fn, false) }

// decode decodes fn; bytes that decode to nothing are skipped, or, when
// strict, an error (a control-flow graph needs every instruction).
func (b *Binary) decode(fn Func, strict bool) ([]Instruction, error) {
	code := make([]byte, fn.End-fn.Entry)
	if _, err := b.text.ReadAt(code, int64(fn.Entry-b.text.Addr)); err != nil {
		return nil, fmt.Errorf("%s: read code: %w", fn.Name, err)
	}
	var out []Instruction
	for pc := 0; pc < len(code); {
		inst, err := x86asm.Decode(code[pc:], 64)
		if err != nil || inst.Len == 0 {
			if strict {
				return nil, fmt.Errorf("%s: %w at %#x", fn.Name, errUndecodable, fn.Entry+uint64(pc))
			}
			// Data or padding inside the range: skip a byte.
			pc++
			continue
		}
		out = append(out, Instruction{Offset: fn.Offset + uint64(pc), Addr: fn.Entry + uint64(pc), Op: inst.Op, Len: inst.Len, inst: inst})
		pc += inst.Len
	}
	return out, nil
}

// Returns lists the file offsets of fn's RET instructions: where return
// probes go instead of uretprobes.
func (b *Binary) Returns(fn Func) ([]uint64, error) {
	insts, err := b.Instructions(fn)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, in := range insts {
		if in.Op == x86asm.RET {
			out = append(out, in.Offset)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no RET instruction found", fn.Name)
	}
	return out, nil
}

// CallSites lists the file offsets of fn's CALL instructions to callee
// (none where callee was inlined into fn, or is called indirectly). A probe
// there sees the call's arguments in registers, as one on callee's entry
// would, but only for calls from fn; the kernel emulates a CALL.
func (b *Binary) CallSites(fn, callee Func) ([]uint64, error) {
	insts, err := b.Instructions(fn)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, in := range insts {
		if in.Op != x86asm.CALL {
			continue
		}
		if t, ok := branchTarget(in.inst, in.Addr); ok && t == callee.Entry {
			out = append(out, in.Offset)
		}
	}
	return out, nil
}

// Callees names the functions fn calls directly (a CALL with a relative
// target; calls through registers are not seen).
func (b *Binary) Callees(fn Func) (map[string]bool, error) {
	insts, err := b.Instructions(fn)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, in := range insts {
		if in.Op != x86asm.CALL {
			continue
		}
		if t, ok := branchTarget(in.inst, in.Addr); ok {
			if f := b.table.PCToFunc(t); f != nil && f.Entry == t {
				out[f.Name] = true
			}
		}
	}
	return out, nil
}

// branchTarget is where the jump or call inst at addr goes, if its target
// is relative (not through a register or memory).
func branchTarget(inst x86asm.Inst, addr uint64) (uint64, bool) {
	if rel, ok := inst.Args[0].(x86asm.Rel); ok {
		return addr + uint64(inst.Len) + uint64(int64(rel)), true
	}
	return 0, false
}

// Emulated reports whether the kernel emulates op when a uprobe sits on it
// (x86: jumps, calls, push, nop) instead of single-stepping it. On the
// project's machines an emulated probe costs 1-2 µs a hit, a single-stepped
// one 16-26 µs, so probes prefer emulated instructions.
func Emulated(op x86asm.Op) bool {
	switch op {
	case x86asm.CALL, x86asm.JMP, x86asm.PUSH, x86asm.NOP:
		return true
	case x86asm.JCXZ, x86asm.JECXZ, x86asm.JRCXZ: // not among the kernel's
		return false
	}
	return isCondJump(op)
}

// EntryProbe returns the file offset of the first instruction of fn the
// kernel can emulate, within its prologue (before the first CALL, so no
// argument register has been clobbered), falling back to the entry.
func (b *Binary) EntryProbe(fn Func) (uint64, error) {
	insts, err := b.Instructions(fn)
	if err != nil {
		return 0, err
	}
	for _, in := range insts {
		if Emulated(in.Op) && in.Op != x86asm.CALL && in.Op != x86asm.JMP {
			return in.Offset, nil
		}
		if in.Op == x86asm.CALL || in.Op == x86asm.JMP {
			break
		}
	}
	return fn.Offset, nil
}

// ErrNoSuccessPoint means SuccessReturn found no probe point it can prove.
var ErrNoSuccessPoint = errors.New("no provable success point")

// SuccessReturn finds where fn goes on after a successful call to callee,
// a function returning (pointer, error): the conditional jump that tests
// the error right after the call (TEST BX, BX; JE/JNE), while the results
// are still in AX, BX and CX. A jump is emulated by the kernel, a RET is
// single-stepped (16-26 µs a hit here), so a probe there makes the common
// return cheap. It also returns the RETs of fn a return can reach without
// the success edge of that jump (error exits, returns on other paths),
// which still need probes; the RETs reached only through it do not.
//
// The control flow is built from the decoded instructions; a function
// with an indirect jump, undecodable bytes, or no such test after the
// call gives ErrNoSuccessPoint, and the caller probes every RET instead.
func (b *Binary) SuccessReturn(fn, callee Func) (at uint64, rets []uint64, err error) {
	g, err := b.flowGraph(fn)
	if err != nil {
		return 0, nil, err
	}
	// The call, then only instructions that write no register up to the
	// test of BX and the jump on it.
	probe, success := -1, uint64(0)
	for i, in := range g.insts {
		if t, ok := branchTarget(in.inst, in.Addr); in.Op != x86asm.CALL || !ok || t != callee.Entry {
			continue
		}
		for j := i + 1; j+1 < len(g.insts) && j <= i+3; j++ {
			if g.insts[j].Op == x86asm.NOP {
				continue
			}
			if s, ok := g.errorTest(j + 1); ok {
				probe, success = j+1, s
			}
			break
		}
		if probe >= 0 {
			break
		}
	}
	if probe < 0 {
		return 0, nil, fmt.Errorf("%s: %w: no test of the error after a call to %s", fn.Name, ErrNoSuccessPoint, callee.Name)
	}
	rets, err = g.returnsWithout(map[int]uint64{probe: success})
	if err != nil {
		return 0, nil, err
	}
	return g.insts[probe].Offset, rets, nil
}

// NilReturnTests finds, in a function returning (pointer, error), the
// jumps on a test of the error (TEST BX, BX; JE/JNE) whose success edge
// runs straight to a RET of (AX, nil): a block entered only from that
// jump, that zeroes BX and CX (the error's two words), leaves AX alone and
// only unwinds the frame. At such a jump AX already holds what the
// function returns, whichever call it came from; a retry loop that tests
// an error again before returning it (x/net's roundTripViaPool) has one
// where the test after the call (SuccessReturn) proves nothing. It also
// returns the RETs reachable without those edges, which still need probes.
func (b *Binary) NilReturnTests(fn Func) (at, rets []uint64, err error) {
	g, err := b.flowGraph(fn)
	if err != nil {
		return nil, nil, err
	}
	cut := map[int]uint64{}
	for j, jmp := range g.insts {
		success, ok := g.errorTest(j)
		s, known := g.index[success]
		if !ok || !known || s == 0 || g.landings[jmp.Addr] != 0 {
			continue
		}
		// Entered only from the jump: the jump is the only one landing
		// on it (none when it is the jump's fall-through), and the
		// instruction before it, unless the jump, does not run into it.
		if fall := s == j+1; fall && g.landings[success] != 0 || !fall && g.landings[success] != 1 {
			continue
		}
		if op := g.insts[s-1].Op; s != j+1 && op != x86asm.JMP && op != x86asm.RET && op != x86asm.UD2 && op != x86asm.INT {
			continue
		}
		if g.nilReturn(s) {
			cut[j] = success
			at = append(at, jmp.Offset)
		}
	}
	if len(at) == 0 {
		return nil, nil, fmt.Errorf("%s: %w: no test of the error that goes straight to a nil return", fn.Name, ErrNoSuccessPoint)
	}
	if rets, err = g.returnsWithout(cut); err != nil {
		return nil, nil, err
	}
	return at, rets, nil
}

// flowGraph is a function's instructions, for following its control flow.
type flowGraph struct {
	fn       Func
	insts    []Instruction
	index    map[uint64]int // address -> position in insts
	landings map[uint64]int // address -> how many jumps land there
}

func (b *Binary) flowGraph(fn Func) (*flowGraph, error) {
	insts, err := b.decode(fn, true)
	if errors.Is(err, errUndecodable) {
		return nil, fmt.Errorf("%w: %w", ErrNoSuccessPoint, err)
	} else if err != nil {
		return nil, err
	}
	g := &flowGraph{fn: fn, insts: insts, index: map[uint64]int{}, landings: map[uint64]int{}}
	for i, in := range insts {
		g.index[in.Addr] = i
		if t, ok := branchTarget(in.inst, in.Addr); ok && in.Op != x86asm.CALL {
			g.landings[t]++
		}
	}
	return g, nil
}

// errorTest says whether instruction j is a JE/JNE right after TEST BX, BX,
// and where it goes when BX (an error's type word) is nil.
func (g *flowGraph) errorTest(j int) (success uint64, ok bool) {
	if j < 1 || j >= len(g.insts) {
		return 0, false
	}
	in, jmp := g.insts[j-1].inst, g.insts[j]
	if in.Op != x86asm.TEST || in.Args[0] != x86asm.RBX || in.Args[1] != x86asm.RBX ||
		(jmp.Op != x86asm.JE && jmp.Op != x86asm.JNE) {
		return 0, false
	}
	if jmp.Op == x86asm.JNE {
		return jmp.Addr + uint64(jmp.Len), true
	}
	return branchTarget(jmp.inst, jmp.Addr)
}

// nilReturn says whether the instructions from s run straight to a RET
// returning (AX, nil): only zeroing BX and CX, unwinding the frame (ADD
// or SUB of SP, POP BP) and NOPs, with no jump landing among them.
func (g *flowGraph) nilReturn(s int) bool {
	var bx, cx bool
	for k := s; k < len(g.insts); k++ {
		in := g.insts[k].inst
		if k > s && g.landings[g.insts[k].Addr] != 0 {
			return false
		}
		switch {
		case in.Op == x86asm.RET:
			return bx && cx
		case in.Op == x86asm.NOP:
		case in.Op == x86asm.XOR && in.Args[0] == in.Args[1] && (in.Args[0] == x86asm.EBX || in.Args[0] == x86asm.RBX):
			bx = true
		case in.Op == x86asm.XOR && in.Args[0] == in.Args[1] && (in.Args[0] == x86asm.ECX || in.Args[0] == x86asm.RCX):
			cx = true
		case (in.Op == x86asm.ADD || in.Op == x86asm.SUB) && in.Args[0] == x86asm.RSP:
		case in.Op == x86asm.POP && in.Args[0] == x86asm.RBP:
		default:
			return false
		}
	}
	return false
}

// returnsWithout lists the RETs a return can reach from the entry when
// the jumps in cut (position -> the address of their success edge) take
// only their other edge, as file offsets. A RET reachable no way at all
// (the deferreturn block a recovered panic resumes at) is listed too. All
// of them reachable that way is ErrNoSuccessPoint.
func (g *flowGraph) returnsWithout(cut map[int]uint64) ([]uint64, error) {
	walk := func(cutting bool) (map[int]bool, error) {
		found := map[int]bool{}
		seen := make([]bool, len(g.insts))
		work := []int{0}
		push := func(addr uint64) bool {
			i, ok := g.index[addr]
			if !ok {
				return addr < g.fn.Entry || addr >= g.fn.End // a jump out of fn (morestack) is fine
			}
			if !seen[i] {
				seen[i] = true
				work = append(work, i)
			}
			return true
		}
		seen[0] = true
		for len(work) > 0 {
			i := work[len(work)-1]
			work = work[:len(work)-1]
			in := g.insts[i]
			next := in.Addr + uint64(in.Len)
			switch op := in.Op; {
			case op == x86asm.RET || op == x86asm.INT || op == x86asm.UD2:
				if op == x86asm.RET {
					found[i] = true
				}
				continue
			case op == x86asm.JMP:
				t, ok := branchTarget(in.inst, in.Addr)
				if !ok {
					return nil, fmt.Errorf("%s: %w: indirect jump at %#x", g.fn.Name, ErrNoSuccessPoint, in.Addr)
				}
				if !push(t) {
					return nil, fmt.Errorf("%s: %w: jump into an instruction at %#x", g.fn.Name, ErrNoSuccessPoint, in.Addr)
				}
				continue
			case isCondJump(op):
				t, _ := branchTarget(in.inst, in.Addr)
				if success, ok := cut[i]; ok && cutting {
					// Only the error edge.
					if t == success {
						t = next
					}
					push(t)
					continue
				}
				if !push(t) {
					return nil, fmt.Errorf("%s: %w: jump into an instruction at %#x", g.fn.Name, ErrNoSuccessPoint, in.Addr)
				}
			}
			push(next)
		}
		return found, nil
	}
	all, err := walk(false)
	if err != nil {
		return nil, err
	}
	without, err := walk(true)
	if err != nil {
		return nil, err
	}
	var rets []uint64
	total := 0
	for i, in := range g.insts {
		if in.Op != x86asm.RET {
			continue
		}
		total++
		if without[i] || !all[i] {
			rets = append(rets, in.Offset)
		}
	}
	if len(rets) == total {
		return nil, fmt.Errorf("%s: %w: every return is reachable without the success edge", g.fn.Name, ErrNoSuccessPoint)
	}
	return rets, nil
}

func isCondJump(op x86asm.Op) bool {
	switch op {
	case x86asm.JA, x86asm.JAE, x86asm.JB, x86asm.JBE, x86asm.JE, x86asm.JG, x86asm.JGE, x86asm.JL, x86asm.JLE,
		x86asm.JNE, x86asm.JNO, x86asm.JNP, x86asm.JNS, x86asm.JO, x86asm.JP, x86asm.JS, x86asm.JCXZ, x86asm.JECXZ, x86asm.JRCXZ:
		return true
	}
	return false
}
