package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// localTTL is the TTL of the mesh's own answers (CoreDNS's default for
// Kubernetes names): short, as endpoints change.
const localTTL = 5

// Config configures the server.
type Config struct {
	// Address to serve on, UDP and TCP.
	Address string
	// Upstreams are resolvers (host:port) for names outside the mesh,
	// tried in order.
	Upstreams []string
	// Domain is the cluster domain the server is authoritative for.
	Domain string
	// CacheEntries caps the forwarding cache.
	CacheEntries int
	// Timeout is how long to wait for one upstream.
	Timeout time.Duration
}

// DefaultConfig returns the defaults: Istio's DNS port on loopback,
// upstreams from /etc/resolv.conf.
func DefaultConfig() Config {
	return Config{Address: "127.0.0.1:15053", Domain: "cluster.local", CacheEntries: 10000, Timeout: 2 * time.Second}
}

// HostUpstreams returns the resolvers of /etc/resolv.conf as host:port.
func HostUpstreams() ([]string, error) {
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return nil, fmt.Errorf("read /etc/resolv.conf: %w", err)
	}
	var out []string
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out, nil
}

// Validate checks the config.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		return fmt.Errorf("dns: address %q: %w", c.Address, err)
	}
	if c.Domain == "" {
		return errors.New("dns: empty cluster domain")
	}
	for _, u := range c.Upstreams {
		if _, err := netip.ParseAddrPort(u); err != nil {
			return fmt.Errorf("dns: upstream %q: want IP:port: %w", u, err)
		}
		if u == c.Address {
			return fmt.Errorf("dns: upstream %s is this server: it would forward to itself", u)
		}
	}
	if c.CacheEntries < 0 || c.Timeout <= 0 {
		return errors.New("dns: cache size and timeout must be positive")
	}
	return nil
}

// Server answers DNS queries.
type Server struct {
	cfg   Config
	log   *slog.Logger
	table atomic.Pointer[Table]
	cache *cache

	serving atomic.Bool
	metrics metrics
}

type metrics struct {
	queries   *prometheus.CounterVec
	local     prometheus.Counter
	forwarded prometheus.Counter
	cacheHits prometheus.Counter
	errors    *prometheus.CounterVec
}

// New returns a server with an empty table.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, cache: newCache(cfg.CacheEntries)}
	s.table.Store(NewTable(cfg.Domain))
	s.metrics = metrics{
		queries:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sockmesh_dns_queries_total", Help: "DNS queries received, by query type."}, []string{"type"}),
		local:     prometheus.NewCounter(prometheus.CounterOpts{Name: "sockmesh_dns_local_answers_total", Help: "Queries answered from the mesh (including NXDOMAIN in the cluster domain)."}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{Name: "sockmesh_dns_forwarded_total", Help: "Queries sent to an upstream resolver."}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{Name: "sockmesh_dns_cache_hits_total", Help: "Queries for other names answered from the cache."}),
		errors:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sockmesh_dns_errors_total", Help: "Queries answered with an error, by reason."}, []string{"reason"}),
	}
	return s, nil
}

// Collectors are the server's metrics, for the agent's registry.
func (s *Server) Collectors() []prometheus.Collector {
	m := s.metrics
	return []prometheus.Collector{m.queries, m.local, m.forwarded, m.cacheHits, m.errors}
}

// SetTable replaces the mesh's names; answers change at once.
func (s *Server) SetTable(t *Table) { s.table.Store(t) }

// Serving reports whether the server is listening on UDP and TCP.
func (s *Server) Serving() bool { return s.serving.Load() }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	// One UDP socket per CPU with SO_REUSEPORT: the kernel spreads
	// queries over them, and each has its own reader.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	var servers []*dns.Server
	shutdown := func() {
		for _, srv := range servers {
			srv.Shutdown()
		}
	}
	for range max(1, runtime.NumCPU()) {
		pc, err := lc.ListenPacket(ctx, "udp", s.cfg.Address)
		if err != nil {
			shutdown()
			return fmt.Errorf("dns: listen udp: %w", err)
		}
		servers = append(servers, &dns.Server{PacketConn: pc, Handler: s, UDPSize: 65535})
	}
	l, err := net.Listen("tcp", s.cfg.Address)
	if err != nil {
		shutdown()
		return fmt.Errorf("dns: listen tcp: %w", err)
	}
	servers = append(servers, &dns.Server{Listener: l, Handler: s, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }})
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	s.serving.Store(true)
	s.log.Info("DNS serving", "address", s.cfg.Address, "upstreams", s.cfg.Upstreams, "domain", s.cfg.Domain)
	defer s.serving.Store(false)
	defer shutdown()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return fmt.Errorf("dns: serve: %w", err)
	}
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	resp := s.Answer(r)
	if udp {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
		resp.Truncate(size)
	}
	if err := w.WriteMsg(resp); err != nil {
		s.metrics.errors.WithLabelValues("write").Inc()
	}
}

// Answer computes the reply to r, from the mesh or an upstream.
func (s *Server) Answer(r *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	if r.Opcode != dns.OpcodeQuery {
		s.metrics.errors.WithLabelValues("notimp").Inc()
		return resp.SetRcode(r, dns.RcodeNotImplemented)
	}
	if len(r.Question) != 1 {
		s.metrics.errors.WithLabelValues("formerr").Inc()
		return resp.SetRcode(r, dns.RcodeFormatError)
	}
	q := r.Question[0]
	s.metrics.queries.WithLabelValues(typeName(q.Qtype)).Inc()
	t := s.table.Load()
	name := strings.ToLower(q.Name)
	if q.Qclass == dns.ClassINET && dns.IsSubDomain(t.domain, name) {
		s.metrics.local.Inc()
		return s.local(t, r, name)
	}
	return s.forwardOrFail(r)
}

func typeName(t uint16) string {
	if n, ok := dns.TypeToString[t]; ok {
		switch n {
		case "A", "AAAA", "SRV", "CNAME", "PTR", "MX", "TXT", "NS", "SOA", "HTTPS", "SVCB", "ANY":
			return n
		}
	}
	return "other" // bounded label values, whatever clients send
}

// local answers a name in the cluster domain.
func (s *Server) local(t *Table, r *dns.Msg, name string) *dns.Msg {
	q := r.Question[0]
	resp := new(dns.Msg).SetReply(r)
	resp.Authoritative = true
	resp.RecursionAvailable = true
	rec, ok := t.names[name]
	if !ok {
		if !t.exists[name] {
			resp.Rcode = dns.RcodeNameError
		}
		resp.Ns = []dns.RR{t.soa()}
		return resp
	}
	hdr := func(typ uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: typ, Class: dns.ClassINET, Ttl: localTTL}
	}
	if rec.cname != "" {
		resp.Answer = append(resp.Answer, &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: rec.cname})
		if q.Qtype != dns.TypeCNAME {
			// Resolve the target too, as a recursive resolver would:
			// glibc does not follow a bare CNAME itself.
			fq := new(dns.Msg).SetQuestion(rec.cname, q.Qtype)
			fq.RecursionDesired = true
			if up := s.forwardOrFail(fq); up.Rcode == dns.RcodeSuccess {
				resp.Answer = append(resp.Answer, up.Answer...)
			}
		}
		return resp
	}
	switch q.Qtype {
	case dns.TypeA, dns.TypeANY:
		for _, a := range rec.a {
			resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: a.AsSlice()})
		}
		if q.Qtype == dns.TypeA {
			break
		}
		fallthrough
	case dns.TypeAAAA:
		for _, a := range rec.aaaa {
			resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: a.AsSlice()})
		}
	case dns.TypeSRV:
		for _, srv := range rec.srv {
			c := dns.Copy(srv).(*dns.SRV)
			c.Hdr.Name = q.Name
			resp.Answer = append(resp.Answer, c)
			if target, ok := t.names[srv.Target]; ok {
				for _, a := range target.a {
					resp.Extra = append(resp.Extra, &dns.A{Hdr: dns.RR_Header{Name: srv.Target, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: localTTL}, A: a.AsSlice()})
				}
				for _, a := range target.aaaa {
					resp.Extra = append(resp.Extra, &dns.AAAA{Hdr: dns.RR_Header{Name: srv.Target, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: localTTL}, AAAA: a.AsSlice()})
				}
			}
		}
	}
	if len(resp.Answer) == 0 {
		resp.Ns = []dns.RR{t.soa()}
	}
	return resp
}

// soa is the cluster domain's SOA, for negative answers' caching.
func (t *Table) soa() dns.RR {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: t.domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: localTTL},
		Ns:  "ns.dns." + t.domain, Mbox: "hostmaster." + t.domain,
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: localTTL,
	}
}

// forwardOrFail answers from the cache or the upstreams, or SERVFAIL.
func (s *Server) forwardOrFail(r *dns.Msg) *dns.Msg {
	resp, err := s.forward(r)
	if err != nil {
		s.metrics.errors.WithLabelValues("upstream").Inc()
		s.log.Debug("dns: upstream failed", "name", r.Question[0].Name, "err", err)
		return new(dns.Msg).SetRcode(r, dns.RcodeServerFailure)
	}
	return resp
}

func (s *Server) forward(r *dns.Msg) (*dns.Msg, error) {
	key := cacheKey(r)
	if m, ok := s.cache.get(key); ok {
		s.metrics.cacheHits.Inc()
		return replyTo(r, m), nil
	}
	if len(s.cfg.Upstreams) == 0 {
		return nil, errors.New("no upstream resolvers configured")
	}
	s.metrics.forwarded.Inc()
	q := r.Copy()
	q.Id = dns.Id()
	q.Compress = true
	if q.IsEdns0() == nil {
		// Ask for large answers: fewer truncations and TCP retries.
		q.SetEdns0(4096, false)
	}
	var errs []error
	for _, up := range s.cfg.Upstreams {
		m, err := s.exchange(q, up)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", up, err))
			continue
		}
		s.cache.put(key, m)
		return replyTo(r, m), nil
	}
	return nil, errors.Join(errs...)
}

// exchange asks one upstream over UDP, and over TCP if the answer was
// truncated.
func (s *Server) exchange(q *dns.Msg, up string) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp", Timeout: s.cfg.Timeout, UDPSize: 4096}
	m, _, err := c.Exchange(q, up)
	if err == nil && m.Truncated {
		c.Net = "tcp"
		m, _, err = c.Exchange(q, up)
	}
	if err != nil {
		return nil, err
	}
	if m.Id != q.Id {
		return nil, errors.New("answer with the wrong id")
	}
	return m, nil
}

// replyTo makes an upstream answer (or a cached copy) the reply to r: r's
// id, and no OPT record for a client that did not speak EDNS.
func replyTo(r, m *dns.Msg) *dns.Msg {
	m.Id = r.Id
	if r.IsEdns0() == nil {
		stripOPT(m)
	}
	return m
}

func stripOPT(m *dns.Msg) {
	out := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	m.Extra = out
}
