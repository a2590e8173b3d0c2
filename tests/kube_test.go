package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sockmesh/sockmesh/internal/testutil"
	"github.com/sockmesh/sockmesh/tests/harness"
	"github.com/sockmesh/sockmesh/tests/kubeapi"
)

var (
	apiOnce   sync.Once
	apiServer *kubeapi.Server
	apiErr    error
	apiDir    string
)

// kubeAPI starts one real API server for the whole package, on first use
// (TestMain stops it).
func kubeAPI(t *testing.T) *kubeapi.Server {
	t.Helper()
	testutil.Privileged(t)
	apiOnce.Do(func() {
		apiDir, apiErr = os.MkdirTemp("", "sockmesh-kubeapi-")
		if apiErr == nil {
			apiServer, apiErr = kubeapi.Start(apiDir)
		}
	})
	if apiErr != nil {
		t.Fatal(apiErr)
	}
	return apiServer
}

func stopKubeAPI() {
	if apiServer != nil {
		apiServer.Stop()
	}
	if apiDir != "" {
		os.RemoveAll(apiDir)
	}
}

func kubeEndpoints(name string, addrs ...string) *discoveryv1.EndpointSlice {
	port, proto, pname := int32(8080), corev1.ProtocolTCP, "http"
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}},
	}
	for _, a := range addrs {
		ready := true
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return es
}

// TestKubernetesSource creates a Service and an EndpointSlice through a
// real API server and follows them into xDS and the kernel: a pod reaches
// the backend through the ClusterIP the API server allocated; updates and
// deletes propagate; an API server restart leaves the served config alone.
func TestKubernetesSource(t *testing.T) {
	api := kubeAPI(t)
	ctx := context.Background()
	tp := harness.New(t)
	client, be1, be2 := tp.Pod("client", true), tp.Pod("be1", true), tp.Pod("be2", true)
	be1.Serve("be1", []int{8080}, nil)
	be2.Serve("be2", []int{8080}, nil)

	// A node (no kubelet: just the object) whose address serves NodePorts,
	// and the pod behind be1 (it stays Pending; its labels make the
	// workload identity).
	nodeIP := "10.77.0.200"
	if _, err := api.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer api.Client.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{})
	if _, err := api.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-be1", Labels: map[string]string{"app": "web", "version": "v1"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "web"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer api.Client.CoreV1().Pods("default").Delete(ctx, "web-be1", metav1.DeleteOptions{})

	svc, err := api.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{})
	vip := svc.Spec.ClusterIP + ":80"
	slices := api.Client.DiscoveryV1().EndpointSlices("default")
	first := kubeEndpoints("web-a", be1.IP4.String())
	first.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: "web-be1", Namespace: "default"}
	if _, err := slices.Create(ctx, first, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer slices.Delete(ctx, "web-a", metav1.DeleteOptions{})

	sm := tp.StartSockmesh("--kubeconfig", api.Kubeconfig)
	listener := strings.Replace(vip, ":", "_", 1)
	// served is the config the control plane serves for web (the API
	// server's own "kubernetes" Service legitimately changes when it
	// restarts: it withdraws and re-adds its endpoint).
	served := func() string {
		var dump map[string][]json.RawMessage
		json.Unmarshal([]byte(sm.Get("/monitor/debug/config_dump")), &dump)
		for typ, items := range dump {
			var keep []json.RawMessage
			for _, it := range items {
				if strings.Contains(string(it), "web.default.svc.cluster.local") {
					keep = append(keep, it)
				}
			}
			dump[typ] = keep
		}
		b, _ := json.Marshal(dump)
		return string(b)
	}
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(served(), listener) })
	if res := client.Dial("tcp", vip, 10); res.Servers["be1"] != 10 || res.Peers[vip] != 10 {
		t.Fatalf("through the ClusterIP %s: %v peers %v errors %v", vip, res.Servers, res.Peers, res.Errors)
	}
	nodePort := fmt.Sprintf("%s:%d", nodeIP, svc.Spec.Ports[0].NodePort)
	if res := client.Dial("tcp", nodePort, 5); res.Servers["be1"] != 5 {
		t.Fatalf("through the NodePort %s: %v errors %v", nodePort, res.Servers, res.Errors)
	}
	if d := served(); !strings.Contains(d, `"canonicalService":"web"`) || !strings.Contains(d, `"canonicalRevision":"v1"`) || !strings.Contains(d, `"workload":"web-be1"`) {
		t.Errorf("endpoint metadata lacks the pod's workload identity: %s", d)
	}

	// An endpoint added through the API is used.
	es, _ := slices.Get(ctx, "web-a", metav1.GetOptions{})
	es.Endpoints = kubeEndpoints("x", be1.IP4.String(), be2.IP4.String()).Endpoints
	if _, err := slices.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return client.Dial("tcp", vip, 20).Servers["be2"] > 0 })

	// The API server restarts: the served config does not change, and
	// routing goes on.
	before := served()
	// A pod that is no endpoint of any service is served by its address
	// (agents name the clients their servers see by it).
	lg, err := api.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "loadgen", Labels: map[string]string{"app": "loadgen"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "lg", Image: "lg"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Client.CoreV1().Pods("default").Delete(ctx, "loadgen", metav1.DeleteOptions{})
	lg.Status.PodIP, lg.Status.PodIPs = "10.77.0.99", []corev1.PodIP{{IP: "10.77.0.99"}}
	if _, err := api.Client.CoreV1().Pods("default").UpdateStatus(ctx, lg, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool {
		d := sm.Get("/monitor/debug/config_dump")
		return strings.Contains(d, `"clusterName": "sockmesh|workloads"`) && strings.Contains(d, `"address": "10.77.0.99"`) &&
			strings.Contains(d, `"canonicalService": "loadgen"`)
	})
	restartStart := time.Now()
	if err := api.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server restarted in %v", time.Since(restartStart).Round(time.Millisecond))
	if res := client.Dial("tcp", vip, 10); res.Servers["be1"]+res.Servers["be2"] != 10 {
		t.Fatalf("after the API server restart: %v errors %v", res.Servers, res.Errors)
	}
	time.Sleep(2 * time.Second) // informers relist
	if after := served(); after != before {
		t.Fatalf("the served config changed across an API server restart:\nbefore %s\nafter  %s", before, after)
	}

	// Deleting the Service removes it.
	if err := api.Client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return !strings.Contains(served(), listener) })
	waitFor(t, 5*time.Second, func() bool {
		return client.Dial("tcp", vip, 1).Errors["network is unreachable"] == 1
	})
}

// corev1Service is a minimal Service for tests that only need one to exist.
type corev1Service struct{ Name string }

func (s *corev1Service) create(ctx context.Context, api *kubeapi.Server) error {
	_, err := api.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	return err
}

func (s *corev1Service) delete(ctx context.Context, api *kubeapi.Server) {
	api.Client.CoreV1().Services("default").Delete(ctx, s.Name, metav1.DeleteOptions{})
}
