// Package kubeapi runs a real Kubernetes API server and etcd for tests, on
// random loopback ports. The binaries are built from Go modules in
// tools/kube (k8s.io/kubernetes v1.37.2 and the etcd it pins) and cached by
// version outside the repository. The server keeps its certificates, token
// and ports across Restart, so clients see a restart, not a new cluster.
package kubeapi

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Version is the Kubernetes release the tests run against.
const Version = "v1.37.2"

// ServiceCIDR is the range the API server allocates ClusterIPs from.
const ServiceCIDR = "10.96.0.0/16"

// CacheDir is where the built binaries are kept, keyed by Version.
func CacheDir() string {
	if d := os.Getenv("SOCKMESH_KUBE_CACHE"); d != "" {
		return filepath.Join(d, Version)
	}
	return filepath.Join("/var/cache/sockmesh/kube", Version)
}

var buildMu sync.Mutex

// Assets returns the directory holding kube-apiserver and etcd, building
// them when the cache lacks them (about 9 minutes cold on 2 cores).
func Assets() (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	dir := CacheDir()
	if have(dir, "kube-apiserver") && have(dir, "etcd") {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	_, file, _, _ := runtime.Caller(0)
	mod := filepath.Join(filepath.Dir(file), "..", "..", "tools", "kube")
	ldflags := fmt.Sprintf("-X k8s.io/component-base/version.gitVersion=%s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37", Version)
	cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", dir+"/", "k8s.io/kubernetes/cmd/kube-apiserver", "./etcd")
	cmd.Dir = mod
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build kube-apiserver and etcd: %v\n%s", err, out)
	}
	return dir, nil
}

func have(dir, name string) bool {
	st, err := os.Stat(filepath.Join(dir, name))
	return err == nil && st.Mode()&0o111 != 0
}

// Server is a running API server with its etcd.
type Server struct {
	Config     *rest.Config
	Client     kubernetes.Interface
	Kubeconfig string // path of an admin kubeconfig file
	URL        string

	dir     string
	apiArgs []string
	api     *exec.Cmd
	etcd    *exec.Cmd
	logs    *os.File
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start starts etcd and kube-apiserver with state under dir.
func Start(dir string) (_ *Server, err error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if s.logs, err = os.Create(filepath.Join(dir, "logs")); err != nil {
		return nil, err
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	s.etcd = exec.Command(filepath.Join(assets, "etcd"),
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		"--unsafe-no-fsync", "--log-level", "error")
	s.etcd.Stdout, s.etcd.Stderr = s.logs, s.logs
	if err := s.etcd.Start(); err != nil {
		return nil, err
	}

	// A service-account signing key and a static admin token.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	keyFile := filepath.Join(dir, "sa.key")
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(keyFile, pemKey, 0o600); err != nil {
		return nil, err
	}
	token := rand.Text()
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+",sockmesh-admin,sockmesh-admin,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	s.URL = fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	s.apiArgs = []string{
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(ports[2]),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", tokens,
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", ServiceCIDR,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile, "--service-account-signing-key-file", keyFile,
		"--disable-admission-plugins", "ServiceAccount",
		"--allow-privileged=true",
	}
	if err := s.startAPI(); err != nil {
		return nil, err
	}

	s.Config = &rest.Config{Host: s.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	if s.Client, err = kubernetes.NewForConfig(s.Config); err != nil {
		return nil, err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: s.URL, InsecureSkipTLSVerify: true}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin", Namespace: "default"}
	kc.CurrentContext = "test"
	s.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, s.Kubeconfig); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) startAPI() error {
	assets := CacheDir()
	s.api = exec.Command(filepath.Join(assets, "kube-apiserver"), s.apiArgs...)
	s.api.Stdout, s.api.Stderr = s.logs, s.logs
	if err := s.api.Start(); err != nil {
		return err
	}
	// Ready when /readyz answers (any authenticated user may ask it).
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := hc.Get(s.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after 60s; logs in %s:\n%s", s.logs.Name(), tail(s.logs.Name()))
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(string(b), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// stop ends a process: SIGTERM, then SIGKILL after grace.
func stop(cmd *exec.Cmd, grace time.Duration) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		cmd.Process.Kill()
		<-done
	}
}

// Restart stops kube-apiserver and starts it again with the same ports,
// certificates and token (etcd keeps running, so nothing is lost). The
// API server drains watches for a long time on SIGTERM; after 3 s it is
// killed, as a crashed one would be.
func (s *Server) Restart() error {
	stop(s.api, 3*time.Second)
	return s.startAPI()
}

// Stop stops the API server and etcd.
func (s *Server) Stop() error {
	stop(s.api, 3*time.Second)
	stop(s.etcd, 10*time.Second)
	if s.logs != nil {
		s.logs.Close()
	}
	return nil
}
