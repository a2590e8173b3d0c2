package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/sockmesh/sockmesh/mesh"
	"github.com/sockmesh/sockmesh/mesh/convert"
)

// SourceName is the name this source registers its services under.
const SourceName = "kube"

// Node labels Kubernetes puts the locality in.
const (
	LabelRegion = corev1.LabelTopologyRegion
	LabelZone   = corev1.LabelTopologyZone
)

// Config configures the source.
type Config struct {
	// Resync is the informers' resync period (0: none).
	Resync time.Duration
	// Debounce gathers a burst of events into one registry update.
	Debounce time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Resync: 10 * time.Minute, Debounce: 50 * time.Millisecond}
}

// Source keeps a registry in step with an API server.
type Source struct {
	cfg    Config
	client kubernetes.Interface
	reg    *mesh.Registry
	log    *slog.Logger
}

// New returns a source reading through client.
func New(cfg Config, client kubernetes.Interface, reg *mesh.Registry, log *slog.Logger) (*Source, error) {
	if client == nil {
		return nil, errors.New("kube source: no client")
	}
	if cfg.Debounce <= 0 {
		return nil, errors.New("kube source: debounce must be positive")
	}
	return &Source{cfg: cfg, client: client, reg: reg, log: log}, nil
}

// Run watches until ctx ends. The registry is first filled once the caches
// have synced, so a restart never serves a partial mesh.
func (s *Source) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactory(s.client, s.cfg.Resync)
	svcs := f.Core().V1().Services()
	slices := f.Discovery().V1().EndpointSlices()
	nodes := f.Core().V1().Nodes()
	pods := f.Core().V1().Pods()
	namespaces := f.Core().V1().Namespaces()
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	for _, inf := range []cache.SharedIndexInformer{svcs.Informer(), slices.Informer(), nodes.Informer(), pods.Informer(), namespaces.Informer()} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("kube source: %w", err)
		}
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kube source: %v cache did not sync", typ)
		}
	}
	build := func() {
		list, err := s.build(svcs.Lister().List, slices.Lister().List, nodes.Lister().Get)
		if err != nil {
			s.log.Error("kube source: listing failed, keeping the last state", "err", err)
			return
		}
		identify(list, func(ns, name string) (*corev1.Pod, *corev1.Namespace) {
			pod, err := pods.Lister().Pods(ns).Get(name)
			if err != nil {
				return nil, nil
			}
			n, _ := namespaces.Lister().Get(ns)
			return pod, n
		})
		all, err := nodes.Lister().List(labels.Everything())
		if err != nil {
			s.log.Error("kube source: listing nodes failed", "err", err)
			return
		}
		allPods, err := pods.Lister().List(labels.Everything())
		if err != nil {
			s.log.Error("kube source: listing pods failed", "err", err)
			return
		}
		var known []*mesh.Pod
		for _, pod := range allPods {
			n, _ := namespaces.Lister().Get(pod.Namespace)
			if p := convert.PodOf(pod, n); p != nil {
				known = append(known, p)
			}
		}
		s.reg.SetNodeAddrs(SourceName, nodeAddrs(all))
		s.reg.SetMesh(SourceName, list, known)
	}
	build()
	s.log.Info("kube source synced", "services", len(s.reg.Snapshot().Services))
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			if timer == nil {
				timer = time.After(s.cfg.Debounce)
			}
		case <-timer:
			timer = nil
			build()
		}
	}
}

// build converts everything in the caches. Objects that do not convert
// (which the API server's validation makes rare: e.g. SCTP ports) are
// logged and left out; one bad object never hides the others.
func (s *Source) build(
	listServices func(labels.Selector) ([]*corev1.Service, error),
	listSlices func(labels.Selector) ([]*discoveryv1.EndpointSlice, error),
	getNode func(string) (*corev1.Node, error),
) ([]*mesh.Service, error) {
	all, err := listServices(labels.Everything())
	if err != nil {
		return nil, err
	}
	byKey := map[string]*mesh.Service{}
	var out []*mesh.Service
	for _, svc := range all {
		m, err := convert.Service(svc)
		if err != nil {
			s.log.Warn("kube source: service skipped", "err", err)
			continue
		}
		byKey[m.Key()] = m
		out = append(out, m)
	}
	eps, err := listSlices(labels.Everything())
	if err != nil {
		return nil, err
	}
	locality := func(name string) (string, string) {
		n, err := getNode(name)
		if err != nil {
			return "", ""
		}
		return n.Labels[LabelRegion], n.Labels[LabelZone]
	}
	for _, es := range eps {
		if err := convert.Slice(es, byKey, locality); err != nil && !errors.Is(err, convert.ErrNoService) {
			s.log.Warn("kube source: endpoint slice skipped", "err", err)
		}
	}
	sortServices(out)
	return out, nil
}

func sortServices(list []*mesh.Service) {
	slices.SortFunc(list, func(a, b *mesh.Service) int { return strings.Compare(a.Key(), b.Key()) })
}

// identify attaches the workload identity of each endpoint's pod.
func identify(list []*mesh.Service, lookup func(ns, name string) (*corev1.Pod, *corev1.Namespace)) {
	for _, svc := range list {
		for i := range svc.Endpoints {
			e := &svc.Endpoints[i]
			if e.Pod == "" {
				continue
			}
			if pod, ns := lookup(svc.Namespace, e.Pod); pod != nil {
				e.Workload = convert.WorkloadOf(pod, ns)
			}
		}
	}
}

// nodeAddrs collects the nodes' internal and external IPs.
func nodeAddrs(nodes []*corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, n := range nodes {
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil && !slices.Contains(out, ip.Unmap()) {
				out = append(out, ip.Unmap())
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
