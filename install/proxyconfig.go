package install

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3" // types inside listeners
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/sockmesh/sockmesh/xds"
)

// ProxyConfig is what one agent holds: the xDS it accepted (Envoy's
// ConfigDump) and the BPF maps it programmed from it.
type ProxyConfig struct {
	Dump *adminv3.ConfigDump
	Maps json.RawMessage // the agent's /maps, as it sent it
}

// FetchProxyConfig reads an agent's /config_dump and /maps.
func FetchProxyConfig(ctx context.Context, admin string) (*ProxyConfig, error) {
	get := func(path string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, fmt.Errorf("agent admin at %s: %w", admin, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("agent admin %s%s: %s: %s", admin, path, resp.Status, strings.TrimSpace(string(b)))
		}
		return b, nil
	}
	b, err := get("/config_dump")
	if err != nil {
		return nil, err
	}
	var dump adminv3.ConfigDump
	if err := protojson.Unmarshal(b, &dump); err != nil {
		return nil, fmt.Errorf("decode config_dump: %w", err)
	}
	maps, err := get("/maps")
	if err != nil {
		return nil, err
	}
	return &ProxyConfig{Dump: &dump, Maps: maps}, nil
}

// AdminAddress finds the admin address a node reported in its metadata.
func AdminAddress(ps *ProxyStatus) (string, error) {
	for _, cc := range ps.Clients.GetConfig() {
		if a := cc.GetNode().GetMetadata().GetFields()["ADMIN_ADDRESS"].GetStringValue(); a != "" {
			return a, nil
		}
	}
	return "", fmt.Errorf("the node did not report an admin address (ADMIN_ADDRESS metadata): give --admin")
}

// Sections proxy-config can show.
var Sections = []string{"listeners", "routes", "clusters", "endpoints", "maps", "all"}

// WriteProxyConfig renders one section (or all) as tables ("short"), or the
// agent's data as JSON or YAML.
func WriteProxyConfig(w io.Writer, pc *ProxyConfig, section, format string) error {
	if !slices.Contains(Sections, section) {
		return fmt.Errorf("unknown section %q (one of %s)", section, strings.Join(Sections, ", "))
	}
	switch format {
	case "json", "yaml":
		return writeStructured(w, pc, section, format)
	case "", "short":
	default:
		return fmt.Errorf("unknown output format %q (short, json or yaml)", format)
	}
	writers := map[string]func(io.Writer, *ProxyConfig) error{
		"listeners": writeListeners, "routes": writeRoutes, "clusters": writeClusters,
		"endpoints": writeEndpoints, "maps": writeMaps,
	}
	if section != "all" {
		return writers[section](w, pc)
	}
	for i, s := range Sections[:len(Sections)-1] {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s:\n", strings.ToUpper(s))
		if err := writers[s](w, pc); err != nil {
			return err
		}
	}
	return nil
}

func writeStructured(w io.Writer, pc *ProxyConfig, section, format string) error {
	dump, err := protojson.Marshal(pc.Dump)
	if err != nil {
		return err
	}
	var v any
	switch section {
	case "maps":
		v = pc.Maps
	case "all":
		v = map[string]json.RawMessage{"configDump": dump, "maps": pc.Maps}
	default:
		v = json.RawMessage(dump)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(w, "%s\n", strings.TrimRight(string(b), "\n"))
	return err
}

func (pc *ProxyConfig) listeners() []*listenerv3.Listener {
	var out []*listenerv3.Listener
	for _, c := range pc.Dump.GetConfigs() {
		var ld adminv3.ListenersConfigDump
		if c.UnmarshalTo(&ld) != nil {
			continue
		}
		for _, dl := range ld.GetDynamicListeners() {
			var l listenerv3.Listener
			if dl.GetActiveState().GetListener().UnmarshalTo(&l) == nil {
				out = append(out, &l)
			}
		}
	}
	slices.SortFunc(out, func(a, b *listenerv3.Listener) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

func writeListeners(w io.Writer, pc *ProxyConfig) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tPORT\tPROTOCOL\tDESTINATION")
	for _, l := range pc.listeners() {
		sa := l.GetAddress().GetSocketAddress()
		switch {
		case l.GetApiListener() != nil:
			var hcm hcmv3.HttpConnectionManager
			l.GetApiListener().GetApiListener().UnmarshalTo(&hcm)
			fmt.Fprintf(tw, "%s\t-\t-\tgRPC (proxyless)\tRoute: %s\n", l.GetName(), hcm.GetRds().GetRouteConfigName())
		case sa != nil:
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\tCluster: %s\n", l.GetName(), sa.GetAddress(), sa.GetPortValue(), sa.GetProtocol(), listenerCluster(l))
		}
	}
	return tw.Flush()
}

// listenerCluster is what a listener routes to, for display.
func listenerCluster(l *listenerv3.Listener) string {
	c, err := xds.ListenerCluster(l)
	switch {
	case err != nil:
		return "(" + err.Error() + ")"
	case c == "":
		return "-"
	}
	return c
}

func writeRoutes(w io.Writer, pc *ProxyConfig) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDOMAINS\tMATCH\tCLUSTER")
	for _, c := range pc.Dump.GetConfigs() {
		var rd adminv3.RoutesConfigDump
		if c.UnmarshalTo(&rd) != nil {
			continue
		}
		for _, d := range rd.GetDynamicRouteConfigs() {
			var rc routev3.RouteConfiguration
			if d.GetRouteConfig().UnmarshalTo(&rc) != nil {
				continue
			}
			for _, vh := range rc.GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", rc.GetName(), strings.Join(vh.GetDomains(), ","), r.GetMatch().GetPrefix(), r.GetRoute().GetCluster())
				}
			}
		}
	}
	return tw.Flush()
}

func writeClusters(w io.Writer, pc *ProxyConfig) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSERVICE\tNAMESPACE\tPORT\tTYPE")
	var rows []string
	for _, c := range pc.Dump.GetConfigs() {
		var cd adminv3.ClustersConfigDump
		if c.UnmarshalTo(&cd) != nil {
			continue
		}
		for _, dc := range cd.GetDynamicActiveClusters() {
			var cl clusterv3.Cluster
			if dc.GetCluster().UnmarshalTo(&cl) != nil {
				continue
			}
			meta := cl.GetMetadata().GetFilterMetadata()["sockmesh"].GetFields()
			rows = append(rows, fmt.Sprintf("%s\t%s\t%s\t%s\t%s", cl.GetName(), meta["service"].GetStringValue(),
				meta["namespace"].GetStringValue(), meta["port"].GetStringValue(), cl.GetType()))
		}
	}
	slices.Sort(rows)
	for _, r := range rows {
		fmt.Fprintln(tw, r)
	}
	return tw.Flush()
}

func writeEndpoints(w io.Writer, pc *ProxyConfig) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tSTATUS\tWEIGHT\tLOCALITY\tCLUSTER")
	var rows []string
	for _, c := range pc.Dump.GetConfigs() {
		var ed adminv3.EndpointsConfigDump
		if c.UnmarshalTo(&ed) != nil {
			continue
		}
		for _, d := range ed.GetDynamicEndpointConfigs() {
			var cla endpointv3.ClusterLoadAssignment
			if d.GetEndpointConfig().UnmarshalTo(&cla) != nil {
				continue
			}
			for _, loc := range cla.GetEndpoints() {
				locality := strings.Trim(loc.GetLocality().GetRegion()+"/"+loc.GetLocality().GetZone(), "/")
				if locality == "" {
					locality = "-"
				}
				for _, e := range loc.GetLbEndpoints() {
					sa := e.GetEndpoint().GetAddress().GetSocketAddress()
					addr := fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
					if strings.Contains(sa.GetAddress(), ":") {
						addr = fmt.Sprintf("[%s]:%d", sa.GetAddress(), sa.GetPortValue())
					}
					rows = append(rows, fmt.Sprintf("%s\t%s\t%d\t%s\t%s", addr, e.GetHealthStatus(), max(e.GetLoadBalancingWeight().GetValue(), 1), locality, cla.GetClusterName()))
				}
			}
		}
	}
	slices.Sort(rows)
	for _, r := range rows {
		fmt.Fprintln(tw, r)
	}
	return tw.Flush()
}

// writeMaps shows the decoded kernel maps beside the listener and cluster
// each entry came from.
func writeMaps(w io.Writer, pc *ProxyConfig) error {
	var m struct {
		Maps struct {
			Services []struct {
				Service  string `json:"service"`
				Source   string `json:"source"`
				Revision uint32 `json:"revision"`
				Slots    int    `json:"slots"`
				Backends []struct {
					Address string `json:"address"`
					Slots   int    `json:"slots"`
				} `json:"backends"`
			} `json:"services"`
		} `json:"maps"`
	}
	if err := json.Unmarshal(pc.Maps, &m); err != nil {
		return fmt.Errorf("decode maps: %w", err)
	}
	clusters := map[string]string{}
	for _, l := range pc.listeners() {
		clusters[l.GetName()] = listenerCluster(l)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE (KERNEL)\tLISTENER\tCLUSTER\tREVISION\tBACKENDS (SLOTS)")
	for _, s := range m.Maps.Services {
		var bs []string
		for _, b := range s.Backends {
			bs = append(bs, fmt.Sprintf("%s (%d)", b.Address, b.Slots))
		}
		if len(bs) == 0 {
			bs = []string{"none: connections refused"}
		}
		cluster := clusters[s.Source]
		if cluster == "" {
			cluster = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", s.Service, s.Source, cluster, s.Revision, strings.Join(bs, ", "))
	}
	return tw.Flush()
}
