// Command sockmesh is the one sockmesh binary: control plane, node agent,
// both at once (standalone), and the operator CLI. Flags are bound here into
// each component's Config; the components do the rest.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sockmesh/sockmesh/install"
	"github.com/sockmesh/sockmesh/install/precheck"
	"github.com/sockmesh/sockmesh/mesh"
	"github.com/sockmesh/sockmesh/mesh/file"
	"github.com/sockmesh/sockmesh/mesh/kube"
	"github.com/sockmesh/sockmesh/node"
	"github.com/sockmesh/sockmesh/node/dataplane"
	"github.com/sockmesh/sockmesh/node/dns"
	"github.com/sockmesh/sockmesh/xds"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd().ExecuteContext(ctx); err != nil {
		if errors.Is(err, errFindings) {
			os.Exit(install.AnalyzeExitCode)
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:           "sockmesh",
		Short:         "A service mesh without sidecars: xDS control plane, eBPF node agent, operator CLI",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	logger := func() (*slog.Logger, error) {
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
			return nil, fmt.Errorf("--log-level: %w", err)
		}
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
	}
	node.Version = versionString()
	xds.Version = versionString()
	root.AddCommand(upCmd(logger), controlPlaneCmd(logger), agentCmd(logger), precheckCmd(), versionCmd(),
		proxyStatusCmd(), proxyConfigCmd(), manifestCmd(), installCmd(), uninstallCmd(), statusCmd(), analyzeCmd())
	return root
}

type loggerFunc func() (*slog.Logger, error)

func upCmd(logger loggerFunc) *cobra.Command {
	var files []string
	var kubeconfig string
	cp := xds.DefaultConfig()
	cp.Address = "127.0.0.1:15010"
	ag := node.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "up [-f FILE]...",
		Short: "Run the control plane and the agent in one process (standalone, YAML source)",
		Long: `Run sockmesh on this machine: the control plane, fed by YAML files of
Kubernetes kinds (v1 Service, discovery.k8s.io/v1 EndpointSlice) that are
watched for changes, and the node agent, which routes service VIPs at
connect() time for processes in --cgroup.

Without -f, the embedded example mesh is served.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			ag.XDSAddress = cp.Address
			ag.DNS.Domain = cp.Domain
			if ag.NodeID == "" {
				ag.NodeID = hostname()
			}
			if err := defaultUpstreams(&ag); err != nil {
				return err
			}
			return runUp(cmd.Context(), log, files, kubeconfig, cp, ag)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&files, "file", "f", nil, "YAML file or directory of the mesh (repeatable; default: the embedded example)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "also (or instead) serve the services of this cluster")
	f.StringVar(&cp.Address, "xds-address", cp.Address, "address to serve xDS on")
	f.StringVar(&cp.MonitorAddress, "monitoring-address", cp.MonitorAddress, "control plane /metrics, /debug/syncz, /debug/config_dump (empty: off)")
	f.StringVar(&cp.Domain, "domain", cp.Domain, "cluster domain")
	bindAgentFlags(cmd, &ag)
	return cmd
}

func runUp(ctx context.Context, log *slog.Logger, files []string, kubeconfig string, cp xds.Config, ag node.Config) error {
	reg := mesh.NewRegistry()
	g, ctx := errgroup.WithContext(ctx)
	if kubeconfig != "" {
		ks, err := kubeSource(kubeconfig, reg, log)
		if err != nil {
			return err
		}
		g.Go(func() error { return ks.Run(ctx) })
	}
	if len(files) == 0 && kubeconfig == "" {
		svcs, err := file.Parse(map[string][]byte{install.ExampleMeshName: install.ExampleMesh})
		if err != nil {
			return fmt.Errorf("embedded example: %w", err)
		}
		reg.Set(file.SourceName, svcs)
		log.Info("serving the embedded example mesh", "services", len(svcs))
	} else if len(files) > 0 {
		fcfg := file.DefaultConfig()
		fcfg.Paths = files
		src, err := file.New(fcfg, reg, log)
		if err != nil {
			return err
		}
		// The first load must succeed before anything is served.
		if err := src.Load(); err != nil {
			return err
		}
		g.Go(func() error { return src.Run(ctx) })
	}
	srv, err := xds.New(cp, reg, log.With("component", "control-plane"))
	if err != nil {
		return err
	}
	if _, err := srv.Listen(); err != nil {
		return err
	}
	agent, err := node.New(ag, log.With("component", "agent"))
	if err != nil {
		return err
	}
	g.Go(func() error { return srv.Run(ctx) })
	g.Go(func() error { return agent.Run(ctx) })
	return g.Wait()
}

// kubeSource makes the Kubernetes source from a kubeconfig file, or from
// the pod's service account when running in a cluster; nil when neither.
func kubeSource(kubeconfig string, reg *mesh.Registry, log *slog.Logger) (*kube.Source, error) {
	var cfg *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	return kube.New(kube.DefaultConfig(), client, reg, log.With("component", "kube-source"))
}

func controlPlaneCmd(logger loggerFunc) *cobra.Command {
	var files []string
	var kubeconfig string
	cp := xds.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "control-plane -f FILE...",
		Short: "Run the xDS control plane alone",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			reg := mesh.NewRegistry()
			g, ctx := errgroup.WithContext(cmd.Context())
			ks, err := kubeSource(kubeconfig, reg, log)
			if err != nil {
				return err
			}
			if ks == nil && len(files) == 0 {
				return errors.New("control-plane: give the mesh with -f, or a cluster with --kubeconfig (or run in one)")
			}
			if len(files) > 0 {
				fcfg := file.DefaultConfig()
				fcfg.Paths = files
				src, err := file.New(fcfg, reg, log)
				if err != nil {
					return err
				}
				if err := src.Load(); err != nil {
					return err
				}
				g.Go(func() error { return src.Run(ctx) })
			}
			if ks != nil {
				g.Go(func() error { return ks.Run(ctx) })
			}
			srv, err := xds.New(cp, reg, log)
			if err != nil {
				return err
			}
			g.Go(func() error { return srv.Run(ctx) })
			return g.Wait()
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&files, "file", "f", nil, "YAML file or directory of the mesh (repeatable)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "watch this cluster (default: the in-cluster service account, when running in a pod)")
	f.StringVar(&cp.Address, "xds-address", cp.Address, "address to serve xDS on")
	f.StringVar(&cp.MonitorAddress, "monitoring-address", cp.MonitorAddress, "/metrics, /debug/syncz, /debug/config_dump (empty: off)")
	f.StringVar(&cp.Domain, "domain", cp.Domain, "cluster domain")
	return cmd
}

func agentCmd(logger loggerFunc) *cobra.Command {
	ag := node.DefaultConfig()
	var cleanup bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent alone, following a control plane",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cleanup {
				return dataplane.Cleanup(ag.PinDir)
			}
			log, err := logger()
			if err != nil {
				return err
			}
			if ag.NodeID == "" {
				ag.NodeID = hostname()
			}
			if err := defaultUpstreams(&ag); err != nil {
				return err
			}
			a, err := node.New(ag, log)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&ag.XDSAddress, "xds-address", ag.XDSAddress, "control plane xDS address, host:port")
	cmd.Flags().BoolVar(&cleanup, "cleanup", false, "remove what this instance pinned and attached (by --pin-dir) and exit")
	bindAgentFlags(cmd, &ag)
	return cmd
}

func bindAgentFlags(cmd *cobra.Command, ag *node.Config) {
	f := cmd.Flags()
	f.StringVar(&ag.DNS.Address, "dns-address", ag.DNS.Address, "address of the agent's DNS server (UDP and TCP; empty: off)")
	f.BoolVar(&ag.Telemetry, "telemetry", ag.Telemetry, "probe Go HTTP and gRPC servers and clients in the cgroup and export Istio request metrics")
	f.BoolVar(&ag.TelemetryClients, "telemetry-clients", true, "with --telemetry: probe clients too (reporter=source); their end probes are single-stepped RETs, ~30 µs a request")
	f.DurationVar(&ag.TelemetryRescan, "telemetry-rescan", time.Second, "with --telemetry: how often to scan /proc for processes that exec/exit events missed")
	f.StringVar(&ag.AccessLog, "access-log", ag.AccessLog, "with --telemetry: write one JSON line per request to this file (\"-\": standard output)")
	f.BoolVar(&ag.FastPath, "fast-path", ag.FastPath, "same-node fast path: TCP between processes of the cgroup on this node goes socket to socket (sockmap); off keeps connections already on it until they close")
	f.StringArrayVar(&ag.DNS.Upstreams, "dns-upstream", nil, "upstream resolver IP:port for names outside the mesh (repeatable; default: /etc/resolv.conf)")
	f.Func("cluster-dns", "capture DNS sent to this address (pods' nameserver) to the agent's DNS server while it is alive", func(v string) error {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return err
		}
		ag.ClusterDNS = a
		return nil
	})
	f.StringVar(&ag.NodeID, "node-id", ag.NodeID, "node id reported to the control plane (default: the host name)")
	f.StringVar(&ag.Cgroup, "cgroup", ag.Cgroup, "cgroup v2 to attach to: empty for the root, relative to the v2 mount, or absolute")
	f.StringVar(&ag.PinDir, "pin-dir", ag.PinDir, "bpffs directory for this instance's maps and links (bpffs is mounted if needed)")
	f.StringVar(&ag.AdminAddress, "admin-address", ag.AdminAddress, "admin HTTP address (/ready, /config_dump, /maps); keep it on loopback")
	f.StringVar(&ag.MetricsAddress, "metrics-address", ag.MetricsAddress, "Prometheus /metrics address (empty: off)")
	f.Uint32Var(&ag.MaxServices, "max-services", 0, "most service ports in the kernel's service table (0: and at most 32768)")
	f.Uint32Var(&ag.MaxSlots, "max-backend-slots", 0, "capacity of the kernel's backend slot map (0: 262144)")
	f.StringVar(&ag.Cluster, "cluster-id", ag.Cluster, "mesh cluster id reported to the control plane")
	f.StringVar(&ag.Region, "region", ag.Region, "this node's region")
	f.StringVar(&ag.Zone, "zone", ag.Zone, "this node's zone")
}

func precheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "precheck",
		Short: "Check that this kernel has every feature sockmesh uses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return precheck.Write(cmd.OutOrStdout(), precheck.Run())
		},
	}
}

func proxyStatusCmd() *cobra.Command {
	var addr, format string
	cmd := &cobra.Command{
		Use:   "proxy-status [NODE]",
		Short: "Show what every node (or one) has received from the control plane, per xDS type, from CSDS",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			node := ""
			if len(args) == 1 {
				node = args[0]
			}
			ps, err := install.FetchProxyStatus(cmd.Context(), addr, node)
			if err != nil {
				return err
			}
			return install.WriteProxyStatus(cmd.OutOrStdout(), ps, format)
		},
	}
	cmd.Flags().StringVar(&addr, "xds-address", "127.0.0.1:15010", "control plane xDS address")
	cmd.Flags().StringVarP(&format, "output", "o", "table", "table or json")
	return cmd
}

func proxyConfigCmd() *cobra.Command {
	var addr, admin, format string
	cmd := &cobra.Command{
		Use:   "proxy-config NODE listeners|routes|clusters|endpoints|maps|all",
		Short: "Show the xDS a node's agent accepted and the BPF maps it programmed from it",
		Long: `Reads the agent's admin /config_dump (Envoy's ConfigDump) and /maps. The
agent is found through the admin address it reports to the control plane
(ADMIN_ADDRESS node metadata), or given with --admin.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !slices.Contains(install.Sections, args[1]) {
				return fmt.Errorf("unknown section %q (one of %s)", args[1], strings.Join(install.Sections, ", "))
			}
			if admin == "" {
				ps, err := install.FetchProxyStatus(cmd.Context(), addr, args[0])
				if err != nil {
					return err
				}
				if admin, err = install.AdminAddress(ps); err != nil {
					return err
				}
			}
			pc, err := install.FetchProxyConfig(cmd.Context(), admin)
			if err != nil {
				return err
			}
			return install.WriteProxyConfig(cmd.OutOrStdout(), pc, args[1], format)
		},
	}
	cmd.Flags().StringVar(&addr, "xds-address", "127.0.0.1:15010", "control plane xDS address (to find the node's agent)")
	cmd.Flags().StringVar(&admin, "admin", "", "the agent's admin address (skips asking the control plane)")
	cmd.Flags().StringVarP(&format, "output", "o", "short", "short, json or yaml")
	return cmd
}

// valueFlags are the flags that select what gets installed.
type valueFlags struct {
	profile  string
	overlays []string
	sets     []string
}

func (v *valueFlags) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&v.profile, "profile", "default", "profile: "+strings.Join(install.Profiles(), ", "))
	cmd.Flags().StringArrayVarP(&v.overlays, "filename", "f", nil, "values overlay YAML (repeatable, applied in order)")
	cmd.Flags().StringArrayVar(&v.sets, "set", nil, "path=value, e.g. --set agent.clusterDNS=10.96.0.10 (repeatable, after overlays)")
}

func (v *valueFlags) manifests() ([]*unstructured.Unstructured, *install.Values, error) {
	vals, err := install.LoadValues(v.profile, v.overlays, v.sets)
	if err != nil {
		return nil, nil, err
	}
	objs, err := install.Manifests(vals)
	if err != nil {
		return nil, nil, err
	}
	us, err := install.Unstructured(objs)
	return us, vals, err
}

func manifestCmd() *cobra.Command {
	var vf valueFlags
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Print the Kubernetes manifests install would apply",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vals, err := install.LoadValues(vf.profile, vf.overlays, vf.sets)
			if err != nil {
				return err
			}
			objs, err := install.Manifests(vals)
			if err != nil {
				return err
			}
			b, err := install.ManifestYAML(objs)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	vf.bind(gen)
	m := &cobra.Command{Use: "manifest", Short: "Kubernetes manifests of sockmesh"}
	m.AddCommand(gen)
	return m
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
}

// installer connects the installer to the cluster of kubeconfig.
func installer(cmd *cobra.Command, kubeconfig string) (*install.Installer, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	return install.NewInstaller(cfg, cmd.OutOrStdout())
}

// clusterFlags binds the flags uninstall and status share.
func clusterFlags(cmd *cobra.Command, kubeconfig, namespace *string) {
	cmd.Flags().StringVar(kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, ~/.kube/config or in-cluster)")
	cmd.Flags().StringVarP(namespace, "namespace", "n", "sockmesh-system", "namespace sockmesh was installed in")
}

func installCmd() *cobra.Command {
	var vf valueFlags
	var kubeconfig string
	var dryRun, verify bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install sockmesh in a cluster (server-side apply; safe to re-run)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, vals, err := vf.manifests()
			if err != nil {
				return err
			}
			inst, err := installer(cmd, kubeconfig)
			if err != nil {
				return err
			}
			if err := inst.Apply(cmd.Context(), objs, dryRun); err != nil {
				return err
			}
			if verify && !dryRun {
				return inst.Status(cmd.Context(), vals.Namespace, timeout)
			}
			return nil
		},
	}
	vf.bind(cmd)
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, ~/.kube/config or in-cluster)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "have the API server validate everything and change nothing")
	cmd.Flags().BoolVar(&verify, "verify", false, "wait until the control plane and agents are ready")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long --verify waits")
	return cmd
}

func uninstallCmd() *cobra.Command {
	var kubeconfig, namespace string
	var purge bool
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove what install created (with --purge also the namespace and cluster-wide RBAC)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			inst, err := installer(cmd, kubeconfig)
			if err != nil {
				return err
			}
			return inst.Uninstall(cmd.Context(), namespace, purge)
		},
	}
	clusterFlags(cmd, &kubeconfig, &namespace)
	cmd.Flags().BoolVar(&purge, "purge", false, "also remove the namespace and the cluster-wide RBAC")
	return cmd
}

func statusCmd() *cobra.Command {
	var kubeconfig, namespace string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Say whether the control plane and agents are ready (--wait to wait for it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			inst, err := installer(cmd, kubeconfig)
			if err != nil {
				return err
			}
			return inst.Status(cmd.Context(), namespace, wait)
		},
	}
	clusterFlags(cmd, &kubeconfig, &namespace)
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for readiness")
	return cmd
}

// errFindings makes main exit with istioctl's analyze status.
var errFindings = errors.New("analysis found issues")

func analyzeCmd() *cobra.Command {
	var kubeconfig string
	var files []string
	cmd := &cobra.Command{
		Use:   "analyze [-f FILE]...",
		Short: "Find mesh configuration problems, in files or in the live cluster (exit 79 on errors or warnings)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var objs *install.Objects
			var err error
			if len(files) > 0 {
				objs, err = install.FileObjects(files)
			} else {
				var cfg *rest.Config
				if cfg, err = restConfig(kubeconfig); err != nil {
					return err
				}
				var c *kubernetes.Clientset
				if c, err = kubernetes.NewForConfig(cfg); err != nil {
					return err
				}
				objs, err = install.LiveObjects(cmd.Context(), c)
			}
			if err != nil {
				return err
			}
			if install.WriteFindings(cmd.OutOrStdout(), install.Analyze(objs)) {
				return errFindings
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig (for live analysis)")
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "analyze these files instead of the live cluster (repeatable)")
	return cmd
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "sockmesh", versionString())
		},
	}
}

func versionString() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

// defaultUpstreams fills the DNS upstreams from /etc/resolv.conf when none
// were given.
func defaultUpstreams(ag *node.Config) error {
	if ag.DNS.Address == "" || len(ag.DNS.Upstreams) > 0 {
		return nil
	}
	ups, err := dns.HostUpstreams()
	if err != nil {
		return fmt.Errorf("DNS upstreams: %w (give --dns-upstream)", err)
	}
	ag.DNS.Upstreams = ups
	return nil
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "sockmesh-node"
	}
	return h
}
