package webhook

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
)

// ErrRefused is wrapped by the error of a webhook whose address is not
// allowed: a private, loopback, link-local or otherwise internal address,
// or a URL scheme other than http and https.
var ErrRefused = errors.New("webhook address refused")

// internal are the ranges a webhook may not reach unless allowed
// (Config.Allow): besides what netip's Is* methods cover (loopback,
// private, link-local, multicast, unspecified), the blocks that route to
// internal services or carry an internal address inside them.
var internal = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",       // "this network"
		"100.64.0.0/10",   // carrier-grade NAT; some clouds' metadata (100.100.100.200)
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // documentation
		"198.18.0.0/15",   // benchmarking
		"198.51.100.0/24", // documentation
		"203.0.113.0/24",  // documentation
		"240.0.0.0/4",     // reserved, and 255.255.255.255
		"64:ff9b::/96",    // NAT64: an IPv4 address inside
		"64:ff9b:1::/48",  // local NAT64
		"100::/64",        // discard
		"2001::/32",       // Teredo: an IPv4 address inside
		"2001:db8::/32",   // documentation
		"2002::/16",       // 6to4: an IPv4 address inside
		"fec0::/10",       // site-local (deprecated)
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Policy says which addresses webhooks may reach: every public address,
// and the internal ones only inside Allow.
type Policy struct {
	// Allow lists internal ranges that are allowed all the same (tests on
	// loopback; a private deployment whose receivers are on the private
	// network). Empty: none.
	Allow []netip.Prefix
}

// Internal reports whether ip is an internal address (see Policy).
func Internal(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() || !ip.IsValid() {
		return true
	}
	for _, p := range internal {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Permits reports whether a webhook may connect to ip.
func (p Policy) Permits(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !Internal(ip) {
		return true
	}
	for _, a := range p.Allow {
		if a.Contains(ip) {
			return true
		}
	}
	return false
}

// CheckURL refuses, before anything is queued, a webhook URL that can
// never be delivered under p: a scheme other than http(s), a host that is
// an internal IP address outside p.Allow, or "localhost". A host name is
// checked again at every connection, on the addresses it resolves to then
// (Dialer): a name that resolves to an internal address later, by
// mistake or by DNS rebinding, is refused there.
func (p Policy) CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: scheme %q (only http and https)", ErrRefused, u.Scheme)
	}
	host := strings.TrimSuffix(u.Hostname(), ".")
	if ip, err := netip.ParseAddr(host); err == nil {
		if !p.Permits(ip) {
			return fmt.Errorf("%w: %s is an internal address (loopback, private, link-local or reserved); "+
				"a private deployment may allow it with --webhook-allow-net", ErrRefused, ip)
		}
		return nil
	}
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		if !p.Permits(netip.MustParseAddr("127.0.0.1")) {
			return fmt.Errorf("%w: %s is this machine; a test may allow it with --webhook-allow-net 127.0.0.0/8", ErrRefused, host)
		}
	}
	return nil
}

// Control is a net.Dialer Control function that refuses a connection to an
// address p does not permit. It runs on the address the dialer is about to
// connect to, after name resolution, so it sees what DNS said at that
// moment, for every address tried.
func (p Policy) Control(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%w: %q is not an IP address", ErrRefused, host)
	}
	if !p.Permits(ip) {
		return fmt.Errorf("%w: %s is an internal address", ErrRefused, ip.Unmap())
	}
	return nil
}

// ParseAllow parses a comma-separated list of CIDR prefixes or addresses
// ("127.0.0.0/8,10.1.2.3").
func ParseAllow(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is neither an address nor a CIDR prefix", f)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR prefix: %v", f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
