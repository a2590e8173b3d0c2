package gobin

import (
	"debug/dwarf"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Field names a struct field telemetry reads, by its Go type's full name.
type Field struct {
	Struct string // e.g. "net/http.Request"
	Name   string // e.g. "Method"
}

func (f Field) String() string { return f.Struct + "." + f.Name }

// Fields are the struct fields the probes read.
var Fields = []Field{
	{"net/http.Request", "Method"},
	{"net/http.Request", "URL"},
	{"net/http.Request", "Host"},
	{"net/http.Request", "ContentLength"},
	{"net/http.Request", "Proto"},
	{"net/url.URL", "Path"},
	{"net/http.response", "req"},
	{"net/http.response", "status"},
	{"net/http.response", "written"},
	{"net/http.Response", "StatusCode"},
	{"net/http.Response", "ContentLength"},
}

// ErrNoOffsets means neither DWARF nor the embedded table knows the
// offsets for this binary's Go version.
var ErrNoOffsets = errors.New("no struct offsets for this binary")

//go:embed offsets.json
var tableFS embed.FS

// table is offsets.json: Go minor version ("go1.26") -> field -> offset.
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

// minorVersion turns "go1.26.8" into "go1.26".
func minorVersion(v string) string {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + parts[1]
}

// Offsets returns the byte offset of every Field, from the binary's DWARF
// when it has it, else from the embedded table for its Go version. source
// says which ("dwarf" or "table").
func (b *Binary) Offsets() (offsets map[string]uint64, source string, err error) {
	if b.hasDWARF {
		if offsets, err = b.dwarfOffsets(); err == nil {
			return offsets, "dwarf", nil
		}
	}
	if t, ok := table[minorVersion(b.GoVersion)]; ok {
		return t, "table", nil
	}
	if err == nil {
		err = fmt.Errorf("%w: %s has no DWARF and the table lacks %s", ErrNoOffsets, b.Path, minorVersion(b.GoVersion))
	}
	return nil, "", err
}

func (b *Binary) dwarfOffsets() (map[string]uint64, error) {
	d, err := b.elf.DWARF()
	if err != nil {
		return nil, err
	}
	want := map[string]map[string]bool{}
	for _, f := range Fields {
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
		if e.Tag != dwarf.TagStructType {
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
	var missing []string
	for _, f := range Fields {
		if _, ok := out[f.String()]; !ok {
			missing = append(missing, f.String())
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("DWARF of %s lacks %s", b.Path, strings.Join(missing, ", "))
	}
	return out, nil
}
