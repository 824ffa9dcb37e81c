package redisx

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
)

// TLS (the flag or rediss://) verifies the server's name; a bad Redis
// URI's error does not echo its password; a CA file without a certificate
// is refused.
func TestConnOpt(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		tls        bool
		serverName string
	}{
		{"plain", Config{Addr: "10.0.0.5:6379"}, false, ""},
		{"flag", Config{Addr: "redis.internal:6380", TLS: true}, true, "redis.internal"},
		{"rediss URI", Config{Addr: "rediss://:pw@redis.example.com:6380/1"}, true, "redis.example.com"},
		{"redis URI and flag", Config{Addr: "redis://redis.example.com:6379", TLS: true}, true, "redis.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opt, err := tt.cfg.ConnOpt()
			if err != nil {
				t.Fatal(err)
			}
			o, ok := opt.(asynq.RedisClientOpt)
			if !ok {
				t.Fatalf("%T", opt)
			}
			if (o.TLSConfig != nil) != tt.tls {
				t.Fatalf("TLS %v, want %v", o.TLSConfig != nil, tt.tls)
			}
			if tt.tls && (o.TLSConfig.ServerName != tt.serverName || o.TLSConfig.InsecureSkipVerify) {
				t.Fatalf("ServerName %q (insecure %v), want %q verified", o.TLSConfig.ServerName, o.TLSConfig.InsecureSkipVerify, tt.serverName)
			}
		})
	}
	if _, err := (Config{Addr: "redis://:s3cr3t-pw@host:notaport/x"}).ConnOpt(); err == nil || strings.Contains(err.Error(), "s3cr3t-pw") {
		t.Fatalf("error %v: want an error without the password", err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (Config{Addr: "redis.internal:6380", TLS: true, TLSCA: ca}).ConnOpt(); err == nil || !strings.Contains(err.Error(), "--redis-tls-ca") {
		t.Fatalf("a CA file without a certificate: %v", err)
	}
	if _, err := (Config{}).ConnOpt(); err == nil || !strings.Contains(err.Error(), "--redis is empty") {
		t.Fatalf("no address: %v", err)
	}
}
