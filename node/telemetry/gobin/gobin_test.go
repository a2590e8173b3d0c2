package gobin

import (
	"encoding/json"
	"errors"
	"flag"
	"go/version"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

var update = flag.Bool("update", false, "rewrite offsets.json for this Go version")

// fixtures builds testdata/fixture as a normal, a -s, a -w and a -s -w
// binary, once.
func fixtures(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	out := map[string]string{}
	for name, ldflags := range map[string]string{"plain": "", "s": "-s", "w": "-w", "sw": "-s -w"} {
		bin := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-ldflags="+ldflags, "-o", bin, "./testdata/fixture")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build fixture %s: %v\n%s", name, err, b)
		}
		out[name] = bin
	}
	return out
}

func TestGoBinaries(t *testing.T) {
	bins := fixtures(t)
	var dwarf map[string]uint64
	for _, name := range []string{"plain", "s", "w", "sw"} {
		b := mustOpen(t, bins[name])
		if b.GoVersion != runtime.Version() {
			t.Errorf("%s: Go version %q, want %q", name, b.GoVersion, runtime.Version())
		}
		// Functions are found through the pclntab, stripped or not.
		for _, fn := range []string{"net/http.serverHandler.ServeHTTP", "net/http.(*Client).do", "google.golang.org/grpc.(*Server).Stop", "net/http.(*Transport).roundTrip", "google.golang.org/grpc.(*ClientConn).Invoke"} {
			f, err := b.Func(fn)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			rets, err := b.Returns(f)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			// Every offset found is a RET opcode in the file.
			raw, _ := os.ReadFile(bins[name])
			for _, off := range rets {
				if raw[off] != 0xc3 {
					t.Errorf("%s %s: byte at %#x is %#x, not RET", name, fn, off, raw[off])
				}
			}
			entry, err := b.EntryProbe(f)
			if err != nil || entry < f.Offset || entry >= f.Offset+(f.End-f.Entry) {
				t.Errorf("%s %s: entry probe %#x outside the function: %v", name, fn, entry, err)
			}
		}
		if _, err := b.Func("main.noSuchFunction"); !errors.Is(err, ErrNoFunc) {
			t.Errorf("%s: missing function: %v", name, err)
		}
		offs, source, err := b.Offsets()
		if name == "plain" {
			if err != nil || source != "dwarf" {
				t.Fatalf("plain: offsets from %q: %v", source, err)
			}
			dwarf = offs
			if n := countFields(b.GoVersion); len(offs) != n {
				t.Fatalf("plain: %d offsets from DWARF, want all %d of %s", len(offs), n, b.GoVersion)
			}
			if *update {
				for f := range allFields {
					if _, ok := offs[f.String()]; !ok {
						continue // an optional group this Go lacks
					}
					key := b.tableKey(f.Module)
					if table[key] == nil {
						table[key] = map[string]uint64{}
					}
					table[key][f.String()] = offs[f.String()]
				}
				b, _ := json.MarshalIndent(table, "", "  ")
				os.WriteFile("offsets.json", append(b, '\n'), 0o644)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !b.HasDWARF() && source != "table" {
			t.Errorf("%s: no DWARF but offsets from %q", name, source)
		}
		for k, v := range dwarf {
			if offs[k] != v {
				t.Errorf("%s (%s): %s at %d, DWARF says %d", name, source, k, offs[k], v)
			}
		}
	}
}

func TestEmbeddedTableMatchesThisGo(t *testing.T) {
	b, err := Open(fixtures(t)["sw"])
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for f, group := range allFields {
		if !inGo(group, b.GoVersion) {
			continue
		}
		key := b.tableKey(f.Module)
		if _, ok := table[key][f.String()]; !ok {
			t.Errorf("offsets.json %s lacks %s: run go test ./node/telemetry/gobin -run TestGoBinaries -update", key, f)
		}
	}
	// A -s -w binary gets every offset of its Go, from the table (and a
	// module's the module's entry has, whatever Go its code needs).
	offs, source, err := b.Offsets()
	if err != nil || source != "table" || len(offs) < countFields(b.GoVersion) {
		t.Errorf("-s -w: %d offsets from %q: %v", len(offs), source, err)
	}
}

// inGo says whether Go version v has the fields of optional group (every
// Go has the required ones, group ""): net/http's HTTP/2 moved to an
// internal package of other types in Go 1.27.
func inGo(group, v string) bool {
	modern := version.Compare(v, "go1.27") >= 0
	switch group {
	case "net/http bundled http2 server", "x/net http2 server", "net/http bundled http2 client", "x/net http2 client":
		return !modern
	case "net/http/internal/http2 server", "net/http/internal/http2 client":
		return modern
	}
	return true
}

// countFields is how many fields the fixture built with Go version v
// has, those of its optional groups included.
func countFields(v string) int {
	n := 0
	for _, group := range allFields {
		if inGo(group, v) {
			n++
		}
	}
	return n
}

// TestOffsetsOfANewerGo: a Go release the table does not know, whose
// DWARF lacks a field (as if it were renamed), still gets every other
// offset from its DWARF; without DWARF it gets an error.
func TestOffsetsOfANewerGo(t *testing.T) {
	defer func(f []Field) { Fields = f }(Fields)
	Fields = append(slices.Clip(Fields), Field{"", "net/http.Request", "RenamedInGo99"})
	for _, name := range []string{"plain", "sw"} {
		b := mustOpen(t, fixtures(t)[name])
		b.GoVersion = "go1.99.0"
		offs, source, err := b.Offsets()
		if name == "sw" {
			if !errors.Is(err, ErrNoOffsets) {
				t.Errorf("sw: %d offsets from %q, %v; want ErrNoOffsets", len(offs), source, err)
			}
			continue
		}
		if err != nil || source != "dwarf" {
			t.Fatalf("plain: offsets from %q: %v", source, err)
		}
		if _, ok := offs["net/http.Request.RenamedInGo99"]; ok {
			t.Error("plain: an offset for a field its DWARF lacks")
		}
		if got, want := len(offs), countFields(runtime.Version())-1; got != want {
			t.Errorf("plain: %d offsets, want the %d it has", got, want)
		}
	}
}

func TestNotGo(t *testing.T) {
	for _, p := range []string{"/bin/sh", "gobin.go"} {
		if _, err := Open(p); !errors.Is(err, ErrNotGo) {
			t.Errorf("%s: %v, want ErrNotGo", p, err)
		}
	}
}

// TestSuccessReturn: in net/http's client, the test of the error right
// after (*Transport).roundTrip calls (*persistConn).roundTrip is found in
// every build flavour, is a conditional jump (emulated by the kernel), and
// takes the success RET off the list of returns that need probes.
func TestSuccessReturn(t *testing.T) {
	bins := fixtures(t)
	for _, name := range []string{"plain", "s", "w", "sw"} {
		b := mustOpen(t, bins[name])
		fn := mustFunc(t, b, "net/http.(*Transport).roundTrip")
		callee := mustFunc(t, b, "net/http.(*persistConn).roundTrip")
		at, rets, err := b.SuccessReturn(fn, callee)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		insts, _ := b.Instructions(fn)
		if i, ok := errorJump(insts, at); !ok || !Emulated(insts[i].Op) {
			t.Fatalf("%s: success point %#x is not a jump after a test", name, at)
		}
		all, _ := b.Returns(fn)
		if len(rets) == 0 || len(rets) >= len(all) {
			t.Fatalf("%s: %d of %d RETs still probed, want fewer but some (error exits)", name, len(rets), len(all))
		}
		for _, r := range rets {
			if !slices.Contains(all, r) {
				t.Fatalf("%s: %#x is not a RET of the function", name, r)
			}
		}
		// Its calls of the callee: CALL instructions, none to a
		// function it does not call.
		sites, err := b.CallSites(fn, callee)
		if err != nil || len(sites) == 0 {
			t.Fatalf("%s: calls of %s: %v %v", name, callee.Name, sites, err)
		}
		for _, at := range sites {
			if i := slices.IndexFunc(insts, func(in Instruction) bool { return in.Offset == at }); i < 0 || insts[i].Op != x86asm.CALL {
				t.Fatalf("%s: %#x is not a CALL", name, at)
			}
		}
		if none, _ := b.CallSites(callee, fn); len(none) != 0 {
			t.Fatalf("%s: %s calls %s at %v?", name, callee.Name, fn.Name, none)
		}
		// A function it does not call directly has no success point.
		other, _ := b.Func("net/http.serverHandler.ServeHTTP")
		if _, _, err := b.SuccessReturn(fn, other); !errors.Is(err, ErrNoSuccessPoint) {
			t.Fatalf("%s: success after a call that is not there: %v", name, err)
		}
	}
}

// mustOpen opens path for the test's length.
func mustOpen(t *testing.T, path string) *Binary {
	t.Helper()
	b, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// mustFunc finds name in b.
func mustFunc(t *testing.T, b *Binary, name string) Func {
	t.Helper()
	f, err := b.Func(name)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// errorJump finds the instruction at file offset at in insts and says
// whether it is a JE or JNE right after a TEST.
func errorJump(insts []Instruction, at uint64) (int, bool) {
	i := slices.IndexFunc(insts, func(in Instruction) bool { return in.Offset == at })
	return i, i >= 1 && (insts[i].Op == x86asm.JE || insts[i].Op == x86asm.JNE) && insts[i-1].Op == x86asm.TEST
}

// TestNilReturnTests: x/net's retry loop tests its error again before
// returning; the jump on that test is its success point, and only the
// error RETs keep probes. A function whose successes do something more
// before returning has none.
func TestNilReturnTests(t *testing.T) {
	bins := fixtures(t)
	for _, name := range []string{"plain", "sw"} {
		b := mustOpen(t, bins[name])
		fn := mustFunc(t, b, "golang.org/x/net/http2.(*Transport).roundTripViaPool")
		at, rets, err := b.NilReturnTests(fn)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		insts, _ := b.Instructions(fn)
		all, _ := b.Returns(fn)
		if len(at) != 1 || len(rets) == 0 || len(rets) != len(all)-1 {
			t.Fatalf("%s: success points %x, RETs still probed %x of %x: want one point, and every RET but one", name, at, rets, all)
		}
		if _, ok := errorJump(insts, at[0]); !ok {
			t.Fatalf("%s: success point %#x is not a jump after a test", name, at[0])
		}
		// The RET left out returns (AX, nil): BX and CX zeroed before it.
		left := slices.IndexFunc(insts, func(in Instruction) bool {
			return in.Op == x86asm.RET && !slices.Contains(rets, in.Offset)
		})
		var zeroed []x86asm.Arg
		for k := left - 1; k >= 0 && insts[k].Op != x86asm.RET && insts[k].Op != x86asm.JMP && !isCondJump(insts[k].Op); k-- {
			if in := insts[k].inst; in.Op == x86asm.XOR && in.Args[0] == in.Args[1] {
				zeroed = append(zeroed, in.Args[0])
			}
		}
		if !slices.Contains(zeroed, x86asm.Arg(x86asm.EBX)) || !slices.Contains(zeroed, x86asm.Arg(x86asm.ECX)) {
			t.Fatalf("%s: the RET left unprobed at %#x does not return a nil error (zeroed %v)", name, insts[left].Offset, zeroed)
		}
		// net/http's roundTrip cancels a context and sets the request
		// on its success path: no jump goes straight to the return.
		rt, _ := b.Func("net/http.(*Transport).roundTrip")
		if _, _, err := b.NilReturnTests(rt); !errors.Is(err, ErrNoSuccessPoint) {
			t.Fatalf("%s: roundTrip: %v, want no success point", name, err)
		}
	}
}
