// Package redisx turns genfleet's Redis settings (an address or URI, a
// password, TLS and its CA: the --redis… flags every role takes) into
// asynq's connection option, and opens go-redis clients from one. It is
// to Redis what internal/s3x is to S3.
package redisx

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Config says how to reach Redis. Errors about it name the settings by
// their flags (--redis, --redis-tls, --redis-tls-ca), as users set them.
type Config struct {
	// Addr is host:port, or a URI asynq parses (redis://[:password@]host:port[/db],
	// rediss://… for TLS, redis-socket://…, redis-sentinel://…).
	Addr string
	// Password is for a host:port Addr; a URI carries its own.
	Password string
	// TLS connects over TLS (a rediss:// Addr always does), verifying the
	// server's certificate for Addr's host, TLS 1.2 or later.
	TLS bool
	// TLSCA is a PEM file of the CA that signed the server's certificate;
	// empty uses the system roots.
	TLSCA string
}

// ConnOpt returns asynq's connection option for c. An Addr that is not a
// valid URI is an error that does not repeat the URI's password.
func (c Config) ConnOpt() (asynq.RedisConnOpt, error) {
	addr := c.Addr
	if strings.Contains(addr, "://") {
		opt, err := asynq.ParseRedisURI(addr)
		if err != nil {
			// The URI may hold a password: name the flag, not the value.
			return nil, fmt.Errorf("--redis: not a valid Redis URI: %w", redactURIError(err, addr))
		}
		if o, ok := opt.(asynq.RedisClientOpt); ok && (c.TLS || o.TLSConfig != nil) {
			host, _, _ := strings.Cut(o.Addr, ":")
			if o.TLSConfig, err = c.tlsConfig(host); err != nil {
				return nil, err
			}
			return o, nil
		}
		if c.TLS {
			return nil, fmt.Errorf("--redis-tls works with host:port, redis:// and rediss:// addresses, not %T", opt)
		}
		return opt, nil
	}
	if addr == "" {
		return nil, errors.New("--redis is empty")
	}
	opt := asynq.RedisClientOpt{Addr: addr, Password: c.Password}
	if c.TLS {
		host, _, _ := strings.Cut(addr, ":")
		tc, err := c.tlsConfig(host)
		if err != nil {
			return nil, err
		}
		opt.TLSConfig = tc
	}
	return opt, nil
}

// tlsConfig verifies the server as host (TLS 1.2 or later), against TLSCA
// when given.
func (c Config) tlsConfig(host string) (*tls.Config, error) {
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if c.TLSCA != "" {
		pem, err := os.ReadFile(c.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("--redis-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--redis-tls-ca %s: no PEM certificate in it", c.TLSCA)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// redactURIError removes the password of uri from err's message.
func redactURIError(err error, uri string) error {
	u, perr := url.Parse(uri)
	if perr != nil || u.User == nil {
		if perr != nil {
			return errors.New("unparsable URI")
		}
		return err
	}
	if pw, ok := u.User.Password(); ok && pw != "" {
		return errors.New(strings.ReplaceAll(err.Error(), pw, "xxxxx"))
	}
	return err
}

// Client opens a go-redis client for opt, for the Redis work genfleet
// does beside asynq's; the caller closes it.
func Client(opt asynq.RedisConnOpt) (redis.UniversalClient, error) {
	rdb, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("unsupported Redis connection option %T", opt)
	}
	return rdb, nil
}
