package main

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/outputs"
	"github.com/genfleet/genfleet/scheduler"
)

// A succeeded job's status carries image_url: a presigned GET of the real S3
// server that a plain HTTP client, without credentials, fetches the PNG
// with, the same bytes the API serves; the API mode gives the API's own
// URL. Past the output retention the job has no image_url and its image is
// reported deleted.
func TestImageURLOfASucceededJob(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleetWith(t, 1<<20, func(c *scheduler.Config) {
		urls, err := outputs.NewURLs(outputs.Config{Mode: outputs.ModePresigned, S3: c.S3, Expiry: 10 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		c.Images = urls
		c.OutputRetention = 3 * time.Second
	})
	fl.startWorker()
	id := fl.submit(jobBody(7))
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusSucceeded || rec.ImageURL == "" || rec.ImageURLExpiresAt.Before(time.Now().Add(9*time.Minute)) {
		t.Fatalf("job %s: %s, image_url %q expires %v", id, rec.Status, rec.ImageURL, rec.ImageURLExpiresAt)
	}
	if strings.Contains(rec.ImageURL, "/v1/jobs/") || !strings.Contains(rec.ImageURL, "X-Amz-Signature=") {
		t.Fatalf("image_url %s is not a presigned S3 URL", rec.ImageURL)
	}
	resp, err := http.Get(rec.ImageURL)
	if err != nil {
		t.Fatal(err)
	}
	png, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(png, fl.image(id)) || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("GET image_url = %d, %d bytes; want the job's PNG", resp.StatusCode, len(png))
	}
	// The completed event carries it too.
	evResp, r := fl.openEvents(id, "")
	var last []byte
	for {
		ev, err := r.Next()
		if err != nil {
			break
		}
		last = ev.Data
	}
	evResp.Body.Close()
	if !bytes.Contains(last, []byte(`"image_url":"http`)) {
		t.Fatalf("completed event %s has no image_url", last)
	}
	// Past the retention: no URL, and the image is gone.
	time.Sleep(time.Until(rec.FinishedAt.Add(3*time.Second + 100*time.Millisecond)))
	if r := fl.get(id); r.ImageURL != "" {
		t.Fatalf("image_url %q past the retention", r.ImageURL)
	}
	if code, b := fl.do("GET", "/v1/jobs/"+id+"/image", ""); code != http.StatusNotFound || !strings.Contains(string(b), "output-retention") {
		t.Fatalf("image past the retention: %d %s", code, b)
	}
	fl.stopWorkers()
}

// --image-url api: the API's own image URL, under the host the client used.
func TestImageURLFromTheAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newFleetWith(t, 1<<20, func(c *scheduler.Config) {
		c.Images, _ = outputs.NewURLs(outputs.Config{Mode: outputs.ModeAPI})
	})
	fl.startWorker()
	id := fl.submit(jobBody(8))
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.ImageURL != fl.api.URL+"/v1/jobs/"+id+"/image" || !rec.ImageURLExpiresAt.IsZero() {
		t.Fatalf("image_url %q (expires %v), want the API's", rec.ImageURL, rec.ImageURLExpiresAt)
	}
	resp, err := http.Get(rec.ImageURL)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("GET %s = %d", rec.ImageURL, resp.StatusCode)
	}
	fl.stopWorkers()
}
