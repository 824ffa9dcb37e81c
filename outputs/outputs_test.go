package outputs

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
)

func put(t *testing.T, cl *s3.Client, bucket, key string, body []byte) time.Time {
	t.Helper()
	ctx := context.Background()
	if _, err := cl.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key),
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))), ContentType: aws.String("image/png")}); err != nil {
		t.Fatal(err)
	}
	h, err := cl.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	return *h.LastModified
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// A presigned image URL fetches the image from a real S3 server (versitygw)
// with a plain HTTP client, no credentials; once it has expired, S3 refuses
// it. The API mode gives the API's image path under the base it is told.
func TestImageURLs(t *testing.T) {
	srv := testenv.S3Server(t, "outs")
	png := []byte("\x89PNG\r\n\x1a\n not really, but bytes all the same")
	put(t, srv.Client, "outs", "outputs/job-1.png", png)
	ctx := context.Background()

	u, err := NewURLs(Config{Mode: ModePresigned, S3: srv.Client, Expiry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	url, exp, err := u.Image(ctx, "job-1", 0, "outs", "outputs/job-1.png", "http://ignored")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(url, srv.Endpoint+"/outs/outputs/job-1.png?") || !strings.Contains(url, "X-Amz-Signature=") ||
		exp.Before(time.Now().Add(50*time.Second)) || exp.After(time.Now().Add(61*time.Second)) {
		t.Fatalf("presigned URL %s, expires %v", url, exp)
	}
	if code, b := get(t, url); code != http.StatusOK || !bytes.Equal(b, png) {
		t.Fatalf("GET presigned URL = %d, %q", code, b)
	}
	// Tampered: another key under the same signature.
	if code, _ := get(t, strings.Replace(url, "job-1.png", "job-2.png", 1)); code == http.StatusOK {
		t.Fatal("a presigned URL with another key worked")
	}
	short, err := NewURLs(Config{Mode: ModePresigned, S3: srv.Client, Expiry: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	url, _, _ = short.Image(ctx, "job-1", 0, "outs", "outputs/job-1.png", "")
	time.Sleep(2100 * time.Millisecond)
	if code, _ := get(t, url); code != http.StatusForbidden {
		t.Fatalf("expired presigned URL = %d, want 403", code)
	}

	api, err := NewURLs(Config{Mode: ModeAPI})
	if err != nil {
		t.Fatal(err)
	}
	if url, exp, _ := api.Image(ctx, "job-1", 0, "outs", "outputs/job-1.png", "http://10.0.0.5:8080"); url != "http://10.0.0.5:8080/v1/jobs/job-1/image" || !exp.IsZero() {
		t.Fatalf("api URL %q %v", url, exp)
	}
	if url, _, _ := api.Image(ctx, "job-1", 3, "outs", "outputs/job-1/3.png", "http://10.0.0.5:8080"); url != "http://10.0.0.5:8080/v1/jobs/job-1/images/3" {
		t.Fatalf("api URL of image 3: %q", url)
	}
	pub, _ := NewURLs(Config{Mode: ModeAPI, PublicURL: "https://img.example.com/"})
	if url, _, _ := pub.Image(ctx, "job-1", 0, "outs", "outputs/job-1.png", "http://10.0.0.5:8080"); url != "https://img.example.com/v1/jobs/job-1/image" {
		t.Fatalf("api URL with a public URL: %q", url)
	}
	for _, c := range []Config{{Mode: "s3"}, {Mode: ModePresigned}, {Mode: ModePresigned, S3: srv.Client, Expiry: 8 * 24 * time.Hour}, {Mode: ModeAPI, PublicURL: "ftp://x"}} {
		if _, err := NewURLs(c); err == nil {
			t.Fatalf("config %+v accepted", c)
		}
	}
}

// The retention sweep deletes the images under the outputs prefix that are
// older than the retention (every image of a job of several), and nothing
// else: newer images stay, and so does everything outside the prefix, or
// under it but not a job's image, however old.
func TestSweepDeletesOldOutputsOnly(t *testing.T) {
	srv := testenv.S3Server(t, "outs")
	cl := srv.Client
	old := put(t, cl, "outs", "outputs/old.png", []byte("old"))
	put(t, cl, "outs", "outputs/old/1.png", []byte("old"))
	put(t, cl, "outs", "outputs/old/15.png", []byte("old"))
	put(t, cl, "outs", "outputs/notes.txt", []byte("keep"))
	put(t, cl, "outs", "models/old-but-not-an-output", []byte("keep"))
	put(t, cl, "outs", "outputs-not/old.png", []byte("keep"))
	time.Sleep(1100 * time.Millisecond) // LastModified has whole seconds
	recent := put(t, cl, "outs", "outputs/new.png", []byte("new"))
	if !recent.After(old) {
		t.Fatalf("LastModified %v then %v", old, recent)
	}
	const retention = 24 * time.Hour
	s, err := NewSweeper(SweepConfig{S3: cl, Outputs: s3x.URL{Bucket: "outs", Key: "outputs/"}, Retention: retention,
		Now: func() time.Time { return recent.Add(retention) }})
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Sweep(context.Background())
	if err != nil || n != 3 {
		t.Fatalf("sweep deleted %d (%v), want 3", n, err)
	}
	keys, err := listKeys(cl, "outs")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(keys, " "); got != "models/old-but-not-an-output outputs-not/old.png outputs/new.png outputs/notes.txt" {
		t.Fatalf("left: %s", got)
	}
	// A second sweep finds nothing; the loop starts and stops cleanly.
	if n, err := s.Sweep(context.Background()); err != nil || n != 0 {
		t.Fatalf("second sweep: %d %v", n, err)
	}
	s.Start()
	s.Shutdown()
	if _, err := NewSweeper(SweepConfig{S3: cl, Outputs: s3x.URL{Bucket: "outs"}}); err == nil {
		t.Fatal("a sweeper without a retention was made")
	}
}

// With --outputs at the bucket's root, the uploads (uploads/ in the same
// bucket by default) lie under the outputs prefix: the sweep leaves them,
// also where a key there looks like a job's image.
func TestSweepKeepsUploads(t *testing.T) {
	srv := testenv.S3Server(t, "outs")
	cl := srv.Client
	put(t, cl, "outs", "uploads/sha256-"+strings.Repeat("ab", 32), []byte("init image"))
	put(t, cl, "outs", "uploads/1.png", []byte("keep"))
	put(t, cl, "outs", "uploads.png", []byte("a job called uploads"))
	last := put(t, cl, "outs", "job-1.png", []byte("old"))
	s, err := NewSweeper(SweepConfig{S3: cl, Outputs: s3x.URL{Bucket: "outs"}, Uploads: s3x.URL{Bucket: "outs", Key: "uploads/"},
		Retention: time.Hour, Now: func() time.Time { return last.Add(2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.Sweep(context.Background()); err != nil || n != 2 {
		t.Fatalf("sweep deleted %d (%v), want 2", n, err)
	}
	keys, err := listKeys(cl, "outs")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(keys, " "); got != "uploads/1.png uploads/sha256-"+strings.Repeat("ab", 32) {
		t.Fatalf("left: %s", got)
	}
}

func listKeys(cl *s3.Client, bucket string) ([]string, error) {
	out, err := cl.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, aws.ToString(o.Key))
	}
	return keys, nil
}
