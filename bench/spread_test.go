package bench

import (
	"context"
	"testing"
)

// A short spread: 3 hosts (this test binary, started again: TestMain calls
// SpreadChild) cold-start a 4 MiB model of 16 parts against the real S3
// server behind a throttle of 8 MB/s. With peers S3 sends the model about
// once; S3 only, once per host. Then the faults: the host pulling from S3
// killed half way, and a peer serving corrupt parts; every other host ends
// with the verified blob either way.
func TestSpreadSmall(t *testing.T) {
	const size = 4 << 20
	res, err := Spread(context.Background(), SpreadOptions{Hosts: 3, Size: size, PartSize: 256 << 10,
		S3Bandwidth: 8e6, Faults: true, Dir: t.TempDir()}, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	for name, r := range map[string]SpreadRun{"s3-only": res.S3Only, "peers": res.Peers} {
		if r.Hosts != 3 || r.Warm != 3 || len(r.HostSeconds) != 3 {
			t.Errorf("%s: %d of %d hosts warm", name, r.Warm, r.Hosts)
		}
	}
	if res.S3OnlyBytesRatio < 2.9 {
		t.Errorf("S3 only: S3 sent %.2f× the model for 3 hosts, want about 3 (the anchor)", res.S3OnlyBytesRatio)
	}
	if res.S3BytesRatio > 1.2 || res.S3BytesRatio < 1 {
		t.Errorf("peers: S3 sent %.2f× the model, want at most 1.2", res.S3BytesRatio)
	}
	if res.Peers.PeerBytes < 2*size {
		t.Errorf("peers: hosts received %d bytes from each other, want at least %d", res.Peers.PeerBytes, 2*size)
	}
	if res.Peers.Elected != 1 {
		t.Errorf("peers: %d hosts pulled from S3, want 1", res.Peers.Elected)
	}
	if k := res.Killed; k == nil || k.Killed == "" || k.Hosts != 2 || k.Warm != 2 {
		t.Errorf("kill run: %+v; want the 2 survivors warm", k)
	}
	if l := res.Liar; l == nil || l.Hosts != 2 || l.Warm != 2 || l.CorruptParts < 1 || l.PeersAvoided < 1 {
		t.Errorf("liar run: %+v; want both hosts warm and the corrupt parts caught", l)
	}
	if res.AloneSeconds <= 0 || res.TimeAllWarmVsAlone <= 0 {
		t.Errorf("timings: alone %v, ratio %v", res.AloneSeconds, res.TimeAllWarmVsAlone)
	}
}
