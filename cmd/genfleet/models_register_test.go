package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/modelcache"
)

// putWithChecksum uploads data to bucket/key the way S3 clients do:
// "sha256" with a SHA-256 checksum S3 keeps, "none" without one, "multipart"
// in two parts with SHA-256 checksums (S3 then holds a composite checksum,
// a hash of the parts' hashes, not the object's).
func putWithChecksum(t *testing.T, cl *s3.Client, bucket, key string, data []byte, how string) {
	t.Helper()
	ctx := t.Context()
	switch how {
	case "sha256", "none":
		in := &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(data)}
		if how == "sha256" {
			in.ChecksumAlgorithm = types.ChecksumAlgorithmSha256
		}
		if _, err := cl.PutObject(ctx, in); err != nil {
			t.Fatal(err)
		}
	case "multipart":
		const partSize = 5 << 20 // S3's smallest part but the last
		if len(data) <= partSize {
			t.Fatalf("multipart upload of %d bytes: want more than %d", len(data), partSize)
		}
		mp, err := cl.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key, ChecksumAlgorithm: types.ChecksumAlgorithmSha256})
		if err != nil {
			t.Fatal(err)
		}
		var parts []types.CompletedPart
		for i, chunk := range [][]byte{data[:partSize], data[partSize:]} {
			out, err := cl.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: &key, UploadId: mp.UploadId,
				PartNumber: aws.Int32(int32(i + 1)), Body: bytes.NewReader(chunk), ChecksumAlgorithm: types.ChecksumAlgorithmSha256})
			if err != nil {
				t.Fatal(err)
			}
			parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(int32(i + 1)), ChecksumSHA256: out.ChecksumSHA256})
		}
		if _, err := cl.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: mp.UploadId,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}}); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown upload %q", how)
	}
}

func modelBytes(t *testing.T, size int64, seed uint64) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.safetensors")
	if err := writeModel(p, size, seed); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// `genfleet models register` writes a manifest for an object already in
// S3, with the object's sha256 and part digests, read and hashed once
// (with progress) and checked against S3's own checksum where it has a
// full-object SHA-256; with --part-size none such a checksum is taken
// without reading the object, and no part digests are recorded. Nothing is
// uploaded again.
func TestModelsRegister(t *testing.T) {
	e := newPushEnv(t)
	small, big := modelBytes(t, 1<<20, 3), modelBytes(t, 6<<20, 4)
	for _, tc := range []struct {
		name, how string
		data      []byte
		args      []string
		hashed    bool
		partSize  int64 // of the part digests recorded; 0: none
	}{
		{"with-sha256", "sha256", small, nil, true, modelcache.DefaultManifestPartSize},
		{"with-sha256-no-parts", "sha256", small, []string{"--part-size", "none"}, false, 0},
		{"no-checksum", "none", small, []string{"--part-size", "256KiB"}, true, 256 << 10},
		{"no-checksum-no-parts", "none", small, []string{"--part-size", "none"}, true, 0},
		{"multipart", "multipart", big, nil, true, modelcache.DefaultManifestPartSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "w/" + tc.name + ".safetensors"
			putWithChecksum(t, e.s.Client, "pushmodels", key, tc.data, tc.how)
			code, out, stderr := e.run(append([]string{"models", "register", "s3://pushmodels/" + key}, tc.args...)...)
			if code != 0 {
				t.Fatalf("models register: %d\n%s\n%s", code, out, stderr)
			}
			m, err := e.reg.Resolve(t.Context(), tc.name)
			if err != nil {
				t.Fatal(err)
			}
			f := m.Files[0]
			if f.URL != "s3://pushmodels/"+key || f.Size != int64(len(tc.data)) || f.Digest != sha256Of(tc.data) ||
				f.Name != tc.name+".safetensors" || m.Engine != "" || m.Format != "safetensors" || len(m.Files) != 1 {
				t.Errorf("manifest %+v, want digest %s and size %d", m, sha256Of(tc.data), len(tc.data))
			}
			var wantParts []string
			if tc.partSize > 0 {
				h := modelcache.NewPartHasher(tc.partSize)
				h.Write(tc.data)
				_, _, wantParts = h.Sum()
			}
			if f.PartSize != tc.partSize || !reflect.DeepEqual(f.Parts, wantParts) {
				t.Errorf("part digests: size %d, %d digests; want size %d, %d digests", f.PartSize, len(f.Parts), tc.partSize, len(wantParts))
			}
			if tc.how == "sha256" && tc.hashed && !strings.Contains(out, "matches S3's SHA-256 checksum") {
				t.Errorf("want the digest checked against S3's checksum:\n%s", out)
			}
			hashLines := strings.Count(stderr, `"what":"hash s3://pushmodels/`+key+`"`)
			if tc.hashed && (hashLines == 0 || !strings.Contains(out, "hashed")) {
				t.Errorf("want the object read and hashed, with progress:\n%s\n%s", out, stderr)
			}
			if !tc.hashed && (hashLines != 0 || !strings.Contains(out, "from S3's SHA-256 checksum")) {
				t.Errorf("want the digest from S3's checksum, no read:\n%s\n%s", out, stderr)
			}
		})
	}
	// The objects were not uploaded again: the only keys are theirs and
	// the manifests.
	for _, k := range e.keys(t) {
		if !strings.HasPrefix(k, "w/") && !strings.HasPrefix(k, "manifests/") {
			t.Errorf("register wrote %s", k)
		}
	}

	// Another engine's file, and a name of one's own.
	putWithChecksum(t, e.s.Client, "pushmodels", "w/SD-Turbo.gguf", tinyGGUF(), "none")
	if code, out, stderr := e.run("models", "register", "s3://pushmodels/w/SD-Turbo.gguf", "--engine", "sdcpp", "--name", "turbo"); code != 0 {
		t.Fatalf("models register gguf: %d\n%s\n%s", code, out, stderr)
	}
	if m, err := e.reg.Resolve(t.Context(), "turbo"); err != nil || m.Engine != "sdcpp" || m.Format != "gguf" || m.Files[0].Role != "model" || m.Files[0].Digest != sha256Of(tinyGGUF()) {
		t.Errorf("gguf manifest %+v, %v", m, err)
	}
	if code, out, _ := e.run("models", "ls"); code != 0 || !hasRow(out, "no-checksum", "refgen") || !hasRow(out, "turbo", "sdcpp") {
		t.Errorf("models ls:\n%s", out)
	}
}

// What register refuses, with a message that names the problem, and
// without writing a manifest: a missing object, files the engine cannot
// load (as models push refuses them), a prefix, a bad name.
func TestModelsRegisterRefuses(t *testing.T) {
	e := newPushEnv(t)
	putWithChecksum(t, e.s.Client, "pushmodels", "w/notes.safetensors", []byte("just some notes, not a model\n"), "sha256")
	putWithChecksum(t, e.s.Client, "pushmodels", "w/flux.gguf", tinyGGUF(), "none")
	putWithChecksum(t, e.s.Client, "pushmodels", "w/bundle.zip", tinyCkpt(t), "none")
	putWithChecksum(t, e.s.Client, "pushmodels", "w/bad.gguf", []byte("GGUF\x09\x00\x00\x00rest"), "none")
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"missing object", []string{"s3://pushmodels/w/nope.safetensors"}, 1,
			[]string{"no object at s3://pushmodels/w/nope.safetensors", "check the bucket and key"}},
		{"missing bucket", []string{"s3://nobucket/w/x.safetensors"}, 1, []string{"no object at s3://nobucket/w/x.safetensors"}},
		{"text for the built-in engine", []string{"s3://pushmodels/w/notes.safetensors"}, 1,
			[]string{"s3://pushmodels/w/notes.safetensors", "engine refgen takes safetensors"}},
		{"text for sdcpp", []string{"s3://pushmodels/w/notes.safetensors", "--engine", "sdcpp"}, 1,
			[]string{"s3://pushmodels/w/notes.safetensors", "engine sdcpp takes safetensors, GGUF or a PyTorch .ckpt"}},
		{"gguf for the built-in engine", []string{"s3://pushmodels/w/flux.gguf"}, 1, []string{"engine refgen takes safetensors"}},
		{"zip not named ckpt", []string{"s3://pushmodels/w/bundle.zip", "--engine", "sdcpp"}, 1, []string{"not named *.ckpt"}},
		{"malformed gguf", []string{"s3://pushmodels/w/bad.gguf", "--engine", "sdcpp"}, 1, []string{"unsupported version"}},
		{"prefix", []string{"s3://pushmodels/w/"}, 1, []string{"names a prefix"}},
		{"bad name", []string{"s3://pushmodels/w/flux.gguf", "--engine", "sdcpp", "--name", "Flux"}, 1, []string{"invalid model name"}},
		{"not s3", []string{"/tmp/flux.gguf"}, 1, []string{"is not an s3:// URL"}},
		{"part size too small", []string{"s3://pushmodels/w/flux.gguf", "--engine", "sdcpp", "--part-size", "1KiB"}, 1, []string{"--part-size 1KiB: want at least 65536 bytes"}},
		{"part size not a size", []string{"s3://pushmodels/w/flux.gguf", "--engine", "sdcpp", "--part-size", "big"}, 1, []string{"--part-size"}},
		{"no argument", nil, 2, []string{"usage: genfleet models register"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := e.run(append([]string{"models", "register"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s\n%s", code, tc.code, out, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			for _, k := range e.keys(t) {
				if strings.HasPrefix(k, "manifests/") {
					t.Errorf("refused register wrote %s", k)
				}
			}
		})
	}
}

// A model registered from an object already in S3 runs jobs: the worker
// fetches it through the manifest and verifies the registered digest.
func TestModelsRegisterRunsAJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleet(t, 1<<20, "cpu")
	data := modelBytes(t, 2<<20, 11)
	putWithChecksum(t, fl.s3.Client, modelsBucket, "uploaded/fox.safetensors", data, "sha256")
	code, out, stderr := runCLI("models", "register", "s3://"+modelsBucket+"/uploaded/fox.safetensors",
		"--registry", "s3://"+modelsBucket+"/", "--s3-endpoint", fl.s3.Endpoint,
		"--s3-access-key", testenv.AccessKey, "--s3-secret-key", testenv.SecretKey)
	if code != 0 {
		t.Fatalf("models register: %d\n%s\n%s", code, out, stderr)
	}
	fl.startWorker()
	id := fl.submit(`{"model":"fox","prompt":"a red fox","seed":3,"width":64,"height":64,"steps":2}`)
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusSucceeded {
		t.Fatalf("job on the registered model: %s %q", rec.Status, rec.Error)
	}
	sum := sha256.Sum256(data)
	if want := "sha256:" + hex.EncodeToString(sum[:]); rec.Result == nil || rec.Result.ModelDigest != want {
		t.Errorf("job ran model %+v, want digest %s", rec.Result, want)
	}
}
