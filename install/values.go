package install

import (
	"embed"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

//go:embed profiles/*.yaml
var profiles embed.FS

// Values configure the manifests. Every field can be set from a profile,
// an overlay file or --set path=value (JSON names, dotted).
type Values struct {
	Namespace       string       `json:"namespace"`
	Hub             string       `json:"hub"`
	Tag             string       `json:"tag"`
	ImagePullPolicy string       `json:"imagePullPolicy"`
	ControlPlane    ControlPlane `json:"controlPlane"`
	Agent           Agent        `json:"agent"`
}

// ControlPlane configures the control plane Deployment.
type ControlPlane struct {
	Replicas  int32     `json:"replicas"`
	LogLevel  string    `json:"logLevel"`
	Resources Resources `json:"resources"`
}

// Agent configures the agent DaemonSet.
type Agent struct {
	Enabled    bool      `json:"enabled"`
	LogLevel   string    `json:"logLevel"`
	ClusterDNS string    `json:"clusterDNS"`
	Resources  Resources `json:"resources"`
}

// Resources are requests and limits (Kubernetes quantities).
type Resources struct {
	Requests map[string]string `json:"requests,omitempty"`
	Limits   map[string]string `json:"limits,omitempty"`
}

// Profiles lists the built-in profiles.
func Profiles() []string {
	entries, _ := profiles.ReadDir("profiles")
	var out []string
	for _, e := range entries {
		out = append(out, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	return out
}

// LoadValues builds Values from a profile, overlay files (in order) and
// --set assignments (in order), each on top of the previous. The default
// profile is the base of every other. Unknown fields are errors.
func LoadValues(profile string, overlays []string, sets []string) (*Values, error) {
	if profile == "" {
		profile = "default"
	}
	if !slices.Contains(Profiles(), profile) {
		return nil, fmt.Errorf("unknown profile %q (one of %s)", profile, strings.Join(Profiles(), ", "))
	}
	tree := map[string]any{}
	layers := []string{"default"}
	if profile != "default" {
		layers = append(layers, profile)
	}
	for _, p := range layers {
		b, err := profiles.ReadFile(path.Join("profiles", p+".yaml"))
		if err != nil {
			return nil, err
		}
		if err := mergeYAML(tree, b, "profile "+p); err != nil {
			return nil, err
		}
	}
	for _, f := range overlays {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if err := mergeYAML(tree, b, f); err != nil {
			return nil, err
		}
	}
	for _, s := range sets {
		if err := setPath(tree, s); err != nil {
			return nil, err
		}
	}
	js, err := json.Marshal(tree)
	if err != nil {
		return nil, err
	}
	var v Values
	if err := yaml.UnmarshalStrict(js, &v); err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	return &v, v.Validate()
}

// Validate checks values that would make broken manifests.
func (v *Values) Validate() error {
	if v.Namespace == "" || v.Hub == "" || v.Tag == "" {
		return fmt.Errorf("values: namespace, hub and tag are required")
	}
	if v.ControlPlane.Replicas < 1 {
		return fmt.Errorf("values: controlPlane.replicas must be at least 1")
	}
	if v.Agent.ClusterDNS != "" {
		if _, err := netip.ParseAddr(v.Agent.ClusterDNS); err != nil {
			return fmt.Errorf("values: agent.clusterDNS: %w", err)
		}
	}
	for _, l := range []string{v.ControlPlane.LogLevel, v.Agent.LogLevel} {
		if !slices.Contains([]string{"debug", "info", "warn", "error"}, l) {
			return fmt.Errorf("values: log level %q (debug, info, warn or error)", l)
		}
	}
	return nil
}

func mergeYAML(dst map[string]any, b []byte, what string) error {
	var src map[string]any
	if err := yaml.Unmarshal(b, &src); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	merge(dst, src)
	return nil
}

func merge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

// setPath applies "a.b.c=value": the value is read as JSON when it parses
// (numbers, booleans, lists), else as a string.
func setPath(tree map[string]any, assignment string) error {
	key, raw, ok := strings.Cut(assignment, "=")
	if !ok || key == "" {
		return fmt.Errorf("--set %q: want path=value", assignment)
	}
	var val any = raw
	if _, err := strconv.ParseFloat(raw, 64); err == nil || raw == "true" || raw == "false" || strings.HasPrefix(raw, "[") || strings.HasPrefix(raw, "{") {
		if err := json.Unmarshal([]byte(raw), &val); err != nil {
			return fmt.Errorf("--set %s: %w", key, err)
		}
	}
	parts := strings.Split(key, ".")
	m := tree
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = val
	return nil
}
