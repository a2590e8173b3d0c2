package install

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
)

// synczType is Istio's ADS type for client sync status (see xds.SynczType;
// install does not import the control plane).
const synczType = "istio.io/debug/syncz"

// ProxyStatus is what proxy-status shows: the control plane's view of each
// client.
type ProxyStatus struct {
	ControlPlane string
	Clients      *statusv3.ClientStatusResponse
}

// FetchProxyStatus asks the control plane at addr over CSDS for the state
// of every client (or the one named node), and over ADS syncz for the
// control plane's identity.
func FetchProxyStatus(ctx context.Context, addr, node string) (*ProxyStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	req := &statusv3.ClientStatusRequest{}
	if node != "" {
		req.NodeMatchers = []*matcherv3.NodeMatcher{{NodeId: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: node}}}}
	}
	resp, err := statusv3.NewClientStatusDiscoveryServiceClient(conn).FetchClientStatus(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("CSDS at %s: %w", addr, err)
	}
	if node != "" && len(resp.GetConfig()) == 0 {
		return nil, fmt.Errorf("no client %q is connected to the control plane at %s", node, addr)
	}
	return &ProxyStatus{ControlPlane: controlPlaneID(ctx, conn, addr), Clients: resp}, nil
}

// controlPlaneID reads the control plane's identity from an ADS syncz
// answer, as Istio's tooling does; the address stands in if it has none.
func controlPlaneID(ctx context.Context, conn *grpc.ClientConn, addr string) string {
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return addr
	}
	defer st.CloseSend()
	if err := st.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "sockmesh-cli"}, TypeUrl: synczType}); err != nil {
		return addr
	}
	resp, err := st.Recv()
	if err != nil {
		return addr
	}
	var ident struct{ ID string }
	if json.Unmarshal([]byte(resp.GetControlPlane().GetIdentifier()), &ident) != nil || ident.ID == "" {
		return addr
	}
	return ident.ID
}

var statusNames = map[statusv3.ConfigStatus]string{
	statusv3.ConfigStatus_SYNCED:   "SYNCED",
	statusv3.ConfigStatus_STALE:    "STALE",
	statusv3.ConfigStatus_NOT_SENT: "NOT SENT",
	statusv3.ConfigStatus_ERROR:    "ERROR",
	statusv3.ConfigStatus_UNKNOWN:  "UNKNOWN",
}

var typeColumns = []struct{ name, url string }{
	{"CDS", resource.ClusterType}, {"LDS", resource.ListenerType}, {"EDS", resource.EndpointType}, {"RDS", resource.RouteType},
}

// WriteProxyStatus renders ps as a table, or as CSDS JSON with format
// "json".
func WriteProxyStatus(w io.Writer, ps *ProxyStatus, format string) error {
	switch format {
	case "json":
		b, err := protojson.Marshal(ps.Clients)
		if err != nil {
			return err
		}
		// protojson varies its spacing on purpose; re-indent for output
		// people can diff and grep.
		var out bytes.Buffer
		if err := json.Indent(&out, b, "", "  "); err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", out.Bytes())
		return err
	case "", "table":
	default:
		return fmt.Errorf("unknown output format %q (table or json)", format)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	header := []string{"NAME", "CLUSTER", "CONTROL PLANE", "VERSION"}
	for _, c := range typeColumns {
		header = append(header, c.name)
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	var errorsSeen []string
	for _, cc := range ps.Clients.GetConfig() {
		n := cc.GetNode()
		row := []string{n.GetId(), n.GetCluster(), ps.ControlPlane, nodeVersion(n)}
		for _, c := range typeColumns {
			st := statusv3.ConfigStatus_NOT_SENT
			for _, g := range cc.GetGenericXdsConfigs() {
				if g.GetTypeUrl() == c.url {
					st = g.GetConfigStatus()
					if d := g.GetErrorState().GetDetails(); d != "" {
						errorsSeen = append(errorsSeen, fmt.Sprintf("%s %s: %s", n.GetId(), c.name, d))
					}
				}
			}
			row = append(row, statusNames[st])
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, e := range errorsSeen {
		fmt.Fprintf(w, "error: %s\n", e)
	}
	return nil
}

// nodeVersion is what a client says it runs: Istio's ISTIO_VERSION
// metadata, else the user agent's version.
func nodeVersion(n *corev3.Node) string {
	if v := n.GetMetadata().GetFields()["ISTIO_VERSION"].GetStringValue(); v != "" {
		return v
	}
	if v := n.GetUserAgentVersion(); v != "" {
		return v
	}
	return "unknown"
}
