package gobin

import (
	"debug/dwarf"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Field names a struct field telemetry reads, by its Go type's full name.
type Field struct {
	// Module is the module the struct's package is in ("" for the
	// standard library): offsets of a module's structs are looked up in
	// the table by that module's version, not Go's.
	Module string
	Struct string // e.g. "net/http.Request"
	Name   string // e.g. "Method"
}

func (f Field) String() string { return f.Struct + "." + f.Name }

const (
	grpcModule = "google.golang.org/grpc"
	xnetModule = "golang.org/x/net"
)

// Fields are the struct fields the probes read.
var Fields = []Field{
	{"", "net/http.Request", "Method"},
	{"", "net/http.Request", "URL"},
	{"", "net/http.Request", "ContentLength"},
	{"", "net/http.Request", "RemoteAddr"},
	{"", "net/url.URL", "Host"},
	{"", "net/url.URL", "Path"},
	{"", "net/http.response", "req"},
	{"", "net/http.response", "status"},
	{"", "net/http.response", "written"},
	{"", "net/http.Response", "StatusCode"},
	{"", "net/http.Response", "ContentLength"},
	{"", "net/http.Response", "ProtoMajor"},
	{"", "net.TCPAddr", "IP"},
	{grpcModule, "google.golang.org/grpc/internal/transport.ServerStream", "Stream"},
	{grpcModule, "google.golang.org/grpc/internal/transport.Stream", "method"},
	{grpcModule, "google.golang.org/grpc/internal/transport.http2Server", "peer"},
	{grpcModule, "google.golang.org/grpc/peer.Peer", "Addr"},
	{grpcModule, "google.golang.org/grpc/internal/status.Status", "s"},
	{grpcModule, "google.golang.org/grpc/internal/status.Error", "s"},
	// Generated protobuf code (another module, but its layout follows
	// protoc-gen-go, not the module's version): read with grpc's.
	{grpcModule, "google.golang.org/genproto/googleapis/rpc/status.Status", "Code"},
	{grpcModule, "google.golang.org/grpc.ClientConn", "target"},
	{grpcModule, "google.golang.org/grpc/internal/transport.ClientStream", "Stream"},
	{grpcModule, "google.golang.org/grpc.clientStream", "attempt"},
	{grpcModule, "google.golang.org/grpc.csAttempt", "transportStream"},
}

// OptionalFields are read where they are known, in named groups: each is
// looked up on its own, left out where not all its fields are found (a Go
// version that lacks them, or that neither the binary's DWARF nor the
// table knows), and the probes that need them with it.
var OptionalFields = map[string][]Field{
	// HTTP/2 servers: the one net/http bundles (h2_bundle.go; Go 1.27
	// made it an internal package of other types), golang.org/x/net's own
	// (from Go 1.27 on, x/net wraps net/http's instead, unless built with
	// the http2legacy tag), and Go 1.27's net/http/internal/http2.
	"net/http bundled http2 server":  h2ServerFields("", "net/http", "http2"),
	"x/net http2 server":             h2ServerFields(xnetModule, "golang.org/x/net/http2", ""),
	"net/http/internal/http2 server": h2ServerFields("", "net/http/internal/http2", ""),
	// HTTP/2 client streams, so that a request ends with its response's
	// stream (bpf/l7's h2Client): net/http's bundled copy (Go 1.26 and
	// before), net/http/internal/http2 (Go 1.27 on), golang.org/x/net's
	// own (wrapping net/http's from Go 1.27 on).
	"net/http bundled http2 client":  h2ClientFields("", "net/http", "http2"),
	"net/http/internal/http2 client": h2ClientFields("", "net/http/internal/http2", ""),
	"x/net http2 client":             h2ClientFields(xnetModule, "golang.org/x/net/http2", ""),
	// An HTTP/1 client response's body, to the connection it reads, so
	// that the request ends with its body.
	"net/http client body": {
		{"", "net/http.Response", "Body"},
		{"", "net/http.bodyEOFSignal", "body"},
		{"", "net/http.bodyEOFSignal", "fn"},
		{"", "net/http.bodyEOFSignal", "earlyCloseFn"},
		{"", "net/http.gzipReader", "body"},
		{"", "net/http.body", "src"},
		{"", "net/http.body", "r"},
		{"", "io.LimitedReader", "R"},
		{"", "io.LimitedReader", "N"},
		{"", "bufio.Reader", "buf"},
		{"", "bufio.Reader", "rd"},
		{"", "bufio.Reader", "r"},
		{"", "bufio.Reader", "w"},
		{"", "net/http.persistConn", "readLimit"},
	},
}

// h2ServerFields are the fields of an HTTP/2 server's response writer the
// probes read, in the structs of package pkg whose names have prefix.
func h2ServerFields(module, pkg, prefix string) []Field {
	f := func(typ, name string) Field { return Field{module, pkg + "." + prefix + typ, name} }
	fields := []Field{
		f("responseWriter", "rws"), f("responseWriterState", "req"), f("responseWriterState", "status"),
		f("responseWriterState", "wroteBytes"), f("responseWriterState", "stream"), f("stream", "bodyBytes"),
	}
	if pkg == "net/http/internal/http2" {
		// Its request is a ServerRequest, not an *http.Request.
		fields = append(fields, f("ServerRequest", "Method"), f("ServerRequest", "URL"),
			f("ServerRequest", "ContentLength"), f("ServerRequest", "RemoteAddr"))
	}
	return fields
}

// h2ClientFields are the fields of an HTTP/2 client stream the probes
// read, in the structs of package pkg whose names have prefix.
func h2ClientFields(module, pkg, prefix string) []Field {
	f := func(typ, name string) Field { return Field{module, pkg + "." + prefix + typ, name} }
	fields := []Field{
		f("clientStream", "res"), f("clientStream", "readClosed"), f("clientStream", "bytesRemain"),
		f("clientStream", "bufPipe"), f("clientStream", "abortErr"), f("pipe", "b"),
		f("dataBuffer", "expected"), f("gzipReader", "body"),
	}
	if pkg == "net/http/internal/http2" {
		// Its streams keep a response of their own, not an
		// *http.Response.
		fields = append(fields, f("ClientResponse", "Body"))
	}
	return fields
}

// hasAll says whether table entry t has every field of fields.
func hasAll(t map[string]uint64, fields []Field) bool {
	for _, f := range fields {
		if _, ok := t[f.String()]; !ok {
			return false
		}
	}
	return true
}

// allFields are Fields and OptionalFields, each with its optional group's
// name ("" for Fields).
func allFields(yield func(Field, string) bool) {
	for _, f := range Fields {
		if !yield(f, "") {
			return
		}
	}
	for _, name := range slices.Sorted(maps.Keys(OptionalFields)) {
		for _, f := range OptionalFields[name] {
			if !yield(f, name) {
				return
			}
		}
	}
}

// ErrNoOffsets means neither DWARF nor the embedded table knows the
// offsets for this binary's Go version.
var ErrNoOffsets = errors.New("no struct offsets for this binary")

//go:embed offsets.json
var tableFS embed.FS

// table is offsets.json: "go1.26" (the standard library's fields, by Go
// version) or "module@v1.84" (a module's, by its version) -> field ->
// offset.
var table = func() map[string]map[string]uint64 {
	b, err := tableFS.ReadFile("offsets.json")
	if err != nil {
		return nil
	}
	var t map[string]map[string]uint64
	if json.Unmarshal(b, &t) != nil {
		return nil
	}
	return t
}()

// minorVersion turns "go1.26.8" into "go1.26", "v1.84.0" into "v1.84".
func minorVersion(v string) string {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + parts[1]
}

// tableKey is where the table keeps the offsets of module's fields for
// this binary.
func (b *Binary) tableKey(module string) string {
	if module == "" {
		return minorVersion(b.GoVersion)
	}
	return module + "@" + minorVersion(b.Deps[module])
}

// Offsets returns the byte offset of every Field of the standard library
// and of the modules the binary links, from the binary's DWARF when it
// has it, else from the embedded table for the Go or module version.
// source says which ("dwarf", or "table" if any group came from it). A
// binary without DWARF whose Go version the table lacks gets an error; a
// module's fields that are not found (a version the table lacks, in a -w
// binary) are left out, and its probes with them, as are fields a newer
// release's DWARF lacks.
func (b *Binary) Offsets() (offsets map[string]uint64, source string, err error) {
	var fromDWARF map[string]uint64
	if b.hasDWARF {
		fromDWARF, err = b.dwarfOffsets()
	}
	offsets, source = map[string]uint64{}, "dwarf"
	type group struct {
		module   string
		optional string // the name of an optional group
	}
	groups := map[group][]Field{}
	for f, optional := range allFields {
		g := group{f.Module, optional}
		groups[g] = append(groups[g], f)
	}
	for g, fields := range groups {
		module := g.module
		if module != "" && b.Deps[module] == "" {
			continue // not linked
		}
		got, found := map[string]uint64{}, 0
		for _, f := range fields {
			if v, ok := fromDWARF[f.String()]; ok {
				got[f.String()] = v
				found++
			}
		}
		complete := found == len(fields)
		// An optional group missing from a binary's DWARF is not in the
		// binary (or not as the table knows it): only a binary without
		// DWARF takes it from the table, and all of it or none.
		if !complete && (g.optional == "" || !b.hasDWARF) {
			if t, ok := table[b.tableKey(module)]; ok && (g.optional == "" || hasAll(t, fields)) {
				got, complete, source = t, true, "table"
			}
		}
		switch {
		case complete:
		case g.optional == "" && found > 0:
			// A release neither the table knows nor whose DWARF has
			// every field (one renamed or moved): what its DWARF has
			// serves, and only the probes that need the rest are left
			// out.
		case module == "" && g.optional == "":
			if err == nil {
				err = fmt.Errorf("%s has no DWARF", b.Path)
			}
			return nil, "", fmt.Errorf("%w: %v, and the table lacks %s", ErrNoOffsets, err, b.tableKey(module))
		default:
			continue
		}
		for _, f := range fields {
			if v, ok := got[f.String()]; ok {
				offsets[f.String()] = v
			}
		}
	}
	return offsets, source, nil
}

// dwarfOffsets reads what it finds of Fields and OptionalFields from the
// DWARF.
func (b *Binary) dwarfOffsets() (map[string]uint64, error) {
	d, err := b.typesDWARF()
	if err != nil {
		return nil, err
	}
	want := map[string]map[string]bool{}
	for f := range allFields {
		if want[f.Struct] == nil {
			want[f.Struct] = map[string]bool{}
		}
		want[f.Struct][f.Name] = true
	}
	out := map[string]uint64{}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			return nil, err
		}
		if e == nil {
			break
		}
		if e.Tag == dwarf.TagCompileUnit {
			// Go's linker puts every type in the "runtime" unit: the
			// others (functions, their variables) are skipped whole.
			if name, _ := e.Val(dwarf.AttrName).(string); name != "runtime" && e.Children {
				r.SkipChildren()
			}
			continue
		}
		if e.Tag != dwarf.TagStructType {
			if e.Children {
				r.SkipChildren()
			}
			continue
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		fields, ok := want[name]
		if !ok || !e.Children {
			if e.Children {
				r.SkipChildren()
			}
			continue
		}
		for {
			c, err := r.Next()
			if err != nil {
				return nil, err
			}
			if c == nil || c.Tag == 0 {
				break
			}
			if c.Tag != dwarf.TagMember {
				if c.Children {
					r.SkipChildren()
				}
				continue
			}
			field, _ := c.Val(dwarf.AttrName).(string)
			if loc, ok := c.Val(dwarf.AttrDataMemberLoc).(int64); ok && fields[field] {
				out[name+"."+field] = uint64(loc)
			}
		}
	}
	return out, nil
}

// typesDWARF loads the DWARF sections that hold types, not the line
// tables, location lists and frames elf.DWARF decompresses too (most of
// the 200 ms it took for a 40 MB binary).
func (b *Binary) typesDWARF() (*dwarf.Data, error) {
	read := func(name string) ([]byte, error) {
		s := b.elf.Section(name)
		if s == nil {
			return nil, nil
		}
		return s.Data() // decompressed if the section is
	}
	var secs [3][]byte
	for i, name := range []string{".debug_abbrev", ".debug_info", ".debug_str"} {
		data, err := read(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		secs[i] = data
	}
	d, err := dwarf.New(secs[0], nil, nil, secs[1], nil, nil, nil, secs[2])
	if err != nil {
		return nil, err
	}
	// DWARF 5 forms refer to these.
	for _, name := range []string{".debug_str_offsets", ".debug_addr", ".debug_line_str"} {
		data, err := read(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if data != nil {
			if err := d.AddSection(name, data); err != nil {
				return nil, err
			}
		}
	}
	return d, nil
}
