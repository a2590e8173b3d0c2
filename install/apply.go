package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// FieldManager is the server-side apply field manager of the installer.
const FieldManager = "sockmesh-installer"

// Installer applies and removes sockmesh's manifests in a cluster.
type Installer struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
	out    io.Writer
}

// NewInstaller connects to the cluster of cfg; progress goes to out.
func NewInstaller(cfg *rest.Config, out io.Writer) (*Installer, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Installer{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), out: out}, nil
}

func (i *Installer) resource(u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := u.GroupVersionKind()
	m, err := i.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", gvk.Kind, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return i.dyn.Resource(m.Resource).Namespace(u.GetNamespace()), nil
	}
	return i.dyn.Resource(m.Resource), nil
}

// Apply server-side-applies objects in order and says, per object, whether
// it was created, changed or already as wanted. With dryRun the API server
// validates everything and persists nothing.
func (i *Installer) Apply(ctx context.Context, objs []*unstructured.Unstructured, dryRun bool) error {
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: ptr(true)}
	suffix := ""
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
		suffix = " (server dry run)"
	}
	newNamespaces := map[string]bool{}
	for _, u := range objs {
		ri, err := i.resource(u)
		if err != nil {
			return err
		}
		name := u.GetKind() + " " + qualified(u.GetNamespace(), u.GetName())
		if dryRun && newNamespaces[u.GetNamespace()] {
			// The API server cannot dry-run an object into a namespace
			// that only a dry run created.
			fmt.Fprintf(i.out, "- %s not checked: namespace %s does not exist yet%s\n", name, u.GetNamespace(), suffix)
			continue
		}
		before, err := ri.Get(ctx, u.GetName(), metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("%s: %w", name, err)
		}
		if before == nil && u.GetKind() == "Namespace" {
			newNamespaces[u.GetName()] = true
		}
		body, err := json.Marshal(u.Object)
		if err != nil {
			return err
		}
		after, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, opts)
		if err != nil {
			return fmt.Errorf("apply %s: %w", name, err)
		}
		verb := "created"
		switch {
		case before != nil && dryRun:
			verb = "valid"
		case before != nil && before.GetResourceVersion() == after.GetResourceVersion():
			verb = "unchanged"
		case before != nil:
			verb = "configured"
		}
		fmt.Fprintf(i.out, "✔ %s %s%s\n", name, verb, suffix)
	}
	return nil
}

func qualified(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

// installedKinds are what install creates, namespaced first, in delete
// order (workloads before what they use).
var installedKinds = []struct {
	gvr        schema.GroupVersionResource
	kind       string
	namespaced bool
}{
	{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}, "DaemonSet", true},
	{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, "Deployment", true},
	{schema.GroupVersionResource{Version: "v1", Resource: "services"}, "Service", true},
	{schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, "ConfigMap", true},
	{schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}, "ServiceAccount", true},
	{schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}, "ClusterRoleBinding", false},
	{schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}, "ClusterRole", false},
	{schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "Namespace", false},
}

// Uninstall deletes what install created in namespace, found by the
// installer's labels: the workloads and their config; with purge also the
// cluster-wide RBAC and the namespace itself.
func (i *Installer) Uninstall(ctx context.Context, namespace string, purge bool) error {
	sel := metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedBy}
	var errs []error
	for _, k := range installedKinds {
		if !k.namespaced && !purge {
			continue
		}
		var ri dynamic.ResourceInterface = i.dyn.Resource(k.gvr)
		if k.namespaced {
			ri = i.dyn.Resource(k.gvr).Namespace(namespace)
		}
		list, err := ri.List(ctx, sel)
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s: %w", k.kind, err))
			continue
		}
		for _, u := range list.Items {
			if k.kind == "Namespace" && u.GetName() != namespace {
				continue
			}
			if k.kind == "ClusterRoleBinding" && !bindsInto(u, namespace) {
				continue // another installation's
			}
			if k.kind == "ClusterRole" && u.GetName() != ControlPlaneName {
				continue
			}
			err := ri.Delete(ctx, u.GetName(), metav1.DeleteOptions{PropagationPolicy: ptr(metav1.DeletePropagationBackground)})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete %s %s: %w", k.kind, qualified(u.GetNamespace(), u.GetName()), err))
				continue
			}
			fmt.Fprintf(i.out, "✔ %s %s removed\n", k.kind, qualified(u.GetNamespace(), u.GetName()))
		}
	}
	return errors.Join(errs...)
}

func bindsInto(u unstructured.Unstructured, namespace string) bool {
	subjects, _, _ := unstructured.NestedSlice(u.Object, "subjects")
	for _, s := range subjects {
		if m, ok := s.(map[string]any); ok && m["namespace"] == namespace {
			return true
		}
	}
	return false
}

// Status reports whether the control plane and the agents are ready, and
// with wait > 0 waits that long for them. The error says what is not.
func (i *Installer) Status(ctx context.Context, namespace string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		problems, err := i.notReady(ctx, namespace)
		if err != nil {
			return err
		}
		if len(problems) == 0 {
			fmt.Fprintln(i.out, "✔ control plane and agents are ready")
			return nil
		}
		if time.Now().After(deadline) {
			msg := "not ready"
			if wait > 0 {
				msg = fmt.Sprintf("not ready after %v", wait)
			}
			return fmt.Errorf("%s:\n  %s", msg, strings.Join(problems, "\n  "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (i *Installer) notReady(ctx context.Context, namespace string) ([]string, error) {
	var problems []string
	dep, err := i.dyn.Resource(installedKinds[1].gvr).Namespace(namespace).Get(ctx, ControlPlaneName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		problems = append(problems, fmt.Sprintf("control plane: Deployment %s/%s does not exist (is sockmesh installed in %s?)", namespace, ControlPlaneName, namespace))
	case err != nil:
		return nil, err
	default:
		want, _, _ := unstructured.NestedInt64(dep.Object, "spec", "replicas")
		avail, _, _ := unstructured.NestedInt64(dep.Object, "status", "availableReplicas")
		if avail < want {
			problems = append(problems, fmt.Sprintf("control plane: Deployment %s/%s has %d of %d replicas available", namespace, ControlPlaneName, avail, want))
		}
	}
	ds, err := i.dyn.Resource(installedKinds[0].gvr).Namespace(namespace).Get(ctx, AgentName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		// minimal profile: no agents
	case err != nil:
		return nil, err
	default:
		desired, _, _ := unstructured.NestedInt64(ds.Object, "status", "desiredNumberScheduled")
		ready, _, _ := unstructured.NestedInt64(ds.Object, "status", "numberReady")
		switch {
		case desired == 0:
			problems = append(problems, fmt.Sprintf("agents: DaemonSet %s/%s is scheduled on no node (no nodes, or no kubelet/controller running them)", namespace, AgentName))
		case ready < desired:
			problems = append(problems, fmt.Sprintf("agents: DaemonSet %s/%s has %d of %d nodes ready", namespace, AgentName, ready, desired))
		}
	}
	return problems, nil
}
