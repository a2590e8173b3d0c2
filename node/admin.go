package node

import (
	"encoding/json"
	"net/http"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func (a *Agent) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "not ready: waiting for the first configuration from the control plane", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /config_dump", a.configDump)
	mux.HandleFunc("GET /maps", func(w http.ResponseWriter, _ *http.Request) {
		dump, err := a.dp.Dump()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out := map[string]any{"maps": dump, "xds": a.client.Stats()}
		if a.fp != nil {
			fc, err := a.fp.Dump()
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			out["fastPath"] = fc
		}
		writeJSON(w, out)
	})
	return mux
}

// configDump answers with Envoy's admin ConfigDump: what the agent accepted
// from the control plane, in the shape Envoy tooling reads.
func (a *Agent) configDump(w http.ResponseWriter, _ *http.Request) {
	dump, err := a.buildConfigDump()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	b, err := protojson.MarshalOptions{Indent: "  "}.Marshal(dump)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func (a *Agent) buildConfigDump() (*adminv3.ConfigDump, error) {
	st := a.client.State()
	var ld adminv3.ListenersConfigDump
	for name, l := range st.Listeners {
		v, err := anypb.New(l)
		if err != nil {
			return nil, err
		}
		ld.DynamicListeners = append(ld.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
			Name:        name,
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{Listener: v},
		})
	}
	var cd adminv3.ClustersConfigDump
	for _, c := range st.Clusters {
		v, err := anypb.New(c)
		if err != nil {
			return nil, err
		}
		cd.DynamicActiveClusters = append(cd.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{Cluster: v})
	}
	var ed adminv3.EndpointsConfigDump
	for _, e := range st.Assignments {
		v, err := anypb.New(e)
		if err != nil {
			return nil, err
		}
		ed.DynamicEndpointConfigs = append(ed.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{EndpointConfig: v})
	}
	var dump adminv3.ConfigDump
	for _, m := range []proto.Message{&ld, &cd, &ed} {
		v, err := anypb.New(m)
		if err != nil {
			return nil, err
		}
		dump.Configs = append(dump.Configs, v)
	}
	return &dump, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
