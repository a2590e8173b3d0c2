package dns

import (
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// maxTTL caps how long an upstream answer is kept, whatever its TTL.
const maxTTL = 300 * time.Second

type cacheEntry struct {
	msg     *dns.Msg
	stored  time.Time
	expires time.Time
}

// cache keeps upstream answers for as long as their TTL says: positive
// answers for their smallest record TTL, negative ones for the SOA's
// minimum. When full, an arbitrary entry makes room.
type cache struct {
	mu      sync.Mutex
	max     int
	entries map[string]cacheEntry
}

func newCache(max int) *cache { return &cache{max: max, entries: make(map[string]cacheEntry)} }

func cacheKey(r *dns.Msg) string {
	q := r.Question[0]
	do := "0"
	if opt := r.IsEdns0(); opt != nil && opt.Do() {
		do = "1"
	}
	return strings.ToLower(q.Name) + "/" + dns.TypeToString[q.Qtype] + "/" + dns.ClassToString[q.Qclass] + "/" + do
}

// ttlOf is how long m may be cached: 0 for answers not to cache.
func ttlOf(m *dns.Msg) time.Duration {
	if m.Truncated || (m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError) {
		return 0
	}
	var ttl uint32
	first := true
	consider := func(rrs []dns.RR) {
		for _, rr := range rrs {
			if rr.Header().Rrtype == dns.TypeOPT {
				continue
			}
			t := rr.Header().Ttl
			if soa, ok := rr.(*dns.SOA); ok && soa.Minttl < t {
				t = soa.Minttl
			}
			if first || t < ttl {
				ttl, first = t, false
			}
		}
	}
	consider(m.Answer)
	if len(m.Answer) == 0 {
		consider(m.Ns)
	}
	if first {
		return 0
	}
	return min(time.Duration(ttl)*time.Second, maxTTL)
}

func (c *cache) put(key string, m *dns.Msg) {
	ttl := ttlOf(m)
	if ttl == 0 || c.max == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	now := time.Now()
	c.entries[key] = cacheEntry{msg: m.Copy(), stored: now, expires: now.Add(ttl)}
}

// get returns a copy of a live entry with its TTLs counted down.
func (c *cache) get(key string) (*dns.Msg, bool) {
	c.mu.Lock()
	e, ok := c.entries[key]
	if ok && time.Now().After(e.expires) {
		delete(c.entries, key)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return nil, false
	}
	m := e.msg.Copy()
	age := uint32(time.Since(e.stored) / time.Second)
	for _, rrs := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range rrs {
			if h := rr.Header(); h.Rrtype != dns.TypeOPT {
				h.Ttl -= min(age, h.Ttl)
			}
		}
	}
	return m, true
}
