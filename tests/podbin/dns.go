package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sockmesh/sockmesh/tests/workload"
)

// dnsServe is a stand-in resolver: it answers A queries for the names
// given with -record NAME=IP and, with -default IP, every other A query
// with that IP (an "original" cluster DNS server that knows nothing of the
// mesh); anything else is NXDOMAIN.
func dnsServe(args []string) error {
	fs := flag.NewFlagSet("dns-serve", flag.ExitOnError)
	addr := fs.String("addr", ":53", "UDP and TCP address")
	def := fs.String("default", "", "answer for names without a record")
	var records multi
	fs.Var(&records, "record", "NAME=IP (repeatable)")
	fs.Parse(args)
	table := map[string]net.IP{}
	for _, r := range records {
		name, ip, _ := strings.Cut(r, "=")
		table[dns.Fqdn(name)] = net.ParseIP(ip)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		if len(r.Question) == 1 {
			q := r.Question[0]
			ip, ok := table[strings.ToLower(q.Name)]
			if !ok && *def != "" {
				ip, ok = net.ParseIP(*def), true
			}
			switch {
			case !ok:
				m.Rcode = dns.RcodeNameError
			case q.Qtype == dns.TypeA && ip.To4() != nil:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: ip})
			}
		}
		w.WriteMsg(m)
	})
	udp := &dns.Server{Addr: *addr, Net: "udp", Handler: h}
	tcp := &dns.Server{Addr: *addr, Net: "tcp", Handler: h}
	errc := make(chan error, 2)
	started := make(chan struct{}, 2)
	udp.NotifyStartedFunc = func() { started <- struct{}{} }
	tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go func() { errc <- udp.ListenAndServe() }()
	go func() { errc <- tcp.ListenAndServe() }()
	for range 2 {
		select {
		case <-started:
		case err := <-errc:
			return err
		}
	}
	workload.Ready()
	return nil
}

// resolve looks a name up with Go's own resolver (not cgo), using the
// pod's /etc/resolv.conf, and prints the result as JSON.
func resolve(args []string) error {
	fs := flag.NewFlagSet("resolve", flag.ExitOnError)
	name := fs.String("name", "", "name to resolve")
	typ := fs.String("type", "A", "A (all addresses), SRV or CNAME")
	fs.Parse(args)
	r := &net.Resolver{PreferGo: true}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := map[string]any{}
	switch *typ {
	case "A":
		addrs, err := r.LookupHost(ctx, *name)
		slices.Sort(addrs)
		out["addrs"], out["error"] = addrs, errString(err)
	case "SRV":
		_, srvs, err := r.LookupSRV(ctx, "", "", *name)
		var list []string
		for _, s := range srvs {
			list = append(list, fmt.Sprintf("%s:%d", s.Target, s.Port))
		}
		slices.Sort(list)
		out["srv"], out["error"] = list, errString(err)
	case "CNAME":
		c, err := r.LookupCNAME(ctx, *name)
		out["cname"], out["error"] = c, errString(err)
	default:
		return fmt.Errorf("unknown type %q", *typ)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	var de *net.DNSError
	if e, ok := err.(*net.DNSError); ok {
		de = e
		if de.IsNotFound {
			return "not found"
		}
	}
	return err.Error()
}

// DNSLoadResult is what dns-load prints.
type DNSLoadResult struct {
	Queries int     `json:"queries"`
	QPS     float64 `json:"qps"`
	P50us   float64 `json:"p50us"`
	P99us   float64 `json:"p99us"`
	Errors  int     `json:"errors"`
}

// dnsLoad sends A queries for name to server over UDP from c concurrent
// clients (each one query in flight) for a fixed time, and reports the
// rate and latency.
func dnsLoad(args []string) error {
	fs := flag.NewFlagSet("dns-load", flag.ExitOnError)
	server := fs.String("server", "", "IP:port")
	name := fs.String("name", "", "name to ask for")
	d := fs.Duration("duration", 2*time.Second, "how long")
	conc := fs.Int("c", 4, "concurrent clients")
	fs.Parse(args)
	type part struct {
		lat    []time.Duration
		errors int
	}
	parts := make([]part, *conc)
	deadline := time.Now().Add(*d)
	done := make(chan struct{})
	for i := range parts {
		go func(p *part) {
			defer func() { done <- struct{}{} }()
			conn, err := net.Dial("udp", *server)
			if err != nil {
				p.errors++
				return
			}
			defer conn.Close()
			co := &dns.Conn{Conn: conn}
			q := new(dns.Msg).SetQuestion(dns.Fqdn(*name), dns.TypeA)
			for time.Now().Before(deadline) {
				q.Id = dns.Id()
				t0 := time.Now()
				conn.SetDeadline(t0.Add(time.Second))
				if err := co.WriteMsg(q); err != nil {
					p.errors++
					continue
				}
				r, err := co.ReadMsg()
				if err != nil || r.Id != q.Id || len(r.Answer) == 0 {
					p.errors++
					continue
				}
				p.lat = append(p.lat, time.Since(t0))
			}
		}(&parts[i])
	}
	for range parts {
		<-done
	}
	var all []time.Duration
	res := DNSLoadResult{}
	for _, p := range parts {
		all = append(all, p.lat...)
		res.Errors += p.errors
	}
	if len(all) == 0 {
		return fmt.Errorf("no answers (%d errors)", res.Errors)
	}
	slices.Sort(all)
	res.Queries = len(all)
	res.QPS = float64(len(all)) / d.Seconds()
	res.P50us = float64(all[len(all)/2]) / 1e3
	res.P99us = float64(all[len(all)*99/100]) / 1e3
	return json.NewEncoder(os.Stdout).Encode(res)
}
