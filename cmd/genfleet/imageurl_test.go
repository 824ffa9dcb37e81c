package main

import (
	"bytes"
	"encoding/json"
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
// with, the same bytes the API serves; each image of a job of several has
// its own, in outputs[], and the completed event carries them all; the API
// mode gives the API's own URL; the job list's entry has them too. Past the
// output retention the job has no image_url and its images are reported
// deleted.
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
	id := fl.submit(`{"model":"demo","prompt":"a red fox","seed":7,"width":128,"height":128,"steps":4,"n":2}`)
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.Status != job.StatusSucceeded || rec.ImageURL == "" || rec.ImageURLExpiresAt.Before(time.Now().Add(9*time.Minute)) {
		t.Fatalf("job %s: %s, image_url %q expires %v", id, rec.Status, rec.ImageURL, rec.ImageURLExpiresAt)
	}
	if len(rec.Outputs) != 2 || rec.Outputs[0].ImageURL != rec.ImageURL || rec.Outputs[1].ImageURL == "" ||
		rec.Outputs[1].ImageURL == rec.ImageURL || rec.Outputs[1].ImageURLExpiresAt.IsZero() {
		t.Fatalf("outputs %+v; want two, each with its own image_url", rec.Outputs)
	}
	if resp, err := http.Get(rec.Outputs[1].ImageURL); err != nil {
		t.Fatal(err)
	} else {
		second, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Equal(second, fl.imageK(id, 1)) || bytes.Equal(second, fl.image(id)) {
			t.Fatalf("GET outputs[1].image_url = %d, %d bytes; want the job's second PNG", resp.StatusCode, len(second))
		}
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
	var done job.Record
	if err := json.Unmarshal(last, &done); err != nil || done.ImageURL == "" || len(done.Outputs) != 2 ||
		done.Outputs[0].ImageURL == "" || done.Outputs[1].ImageURL == "" {
		t.Fatalf("completed event %s: want both outputs, each with an image_url (%v)", last, err)
	}
	// The job list's entry carries them as well.
	code, b := fl.do("GET", "/v1/jobs?status=succeeded", "")
	var list struct{ Jobs []job.Record }
	if err := json.Unmarshal(b, &list); err != nil || code != http.StatusOK || len(list.Jobs) != 1 ||
		list.Jobs[0].ImageURL == "" || len(list.Jobs[0].Outputs) != 2 || list.Jobs[0].Outputs[1].ImageURL == "" {
		t.Fatalf("GET /v1/jobs: %d %s (%v); want the job with both image URLs", code, b, err)
	}
	// Past the retention: no URL, and the image is gone.
	time.Sleep(time.Until(rec.FinishedAt.Add(3*time.Second + 100*time.Millisecond)))
	if r := fl.get(id); r.ImageURL != "" || r.Outputs[1].ImageURL != "" {
		t.Fatalf("image_url %q, outputs %+v past the retention", r.ImageURL, r.Outputs)
	}
	for _, path := range []string{"/image", "/images/1", "/thumbnail"} {
		if code, b := fl.do("GET", "/v1/jobs/"+id+path, ""); code != http.StatusNotFound || !strings.Contains(string(b), "output-retention") {
			t.Fatalf("%s past the retention: %d %s", path, code, b)
		}
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
	id := fl.submit(`{"model":"demo","prompt":"a red fox","seed":8,"width":128,"height":128,"steps":4,"n":3}`)
	rec := fl.wait(id, 60*time.Second, nil)
	if rec.ImageURL != fl.api.URL+"/v1/jobs/"+id+"/image" || !rec.ImageURLExpiresAt.IsZero() {
		t.Fatalf("image_url %q (expires %v), want the API's", rec.ImageURL, rec.ImageURLExpiresAt)
	}
	if len(rec.Outputs) != 3 || rec.Outputs[0].ImageURL != rec.ImageURL || rec.Outputs[2].ImageURL != fl.api.URL+"/v1/jobs/"+id+"/images/2" {
		t.Fatalf("outputs %+v; want the API's URL of each image", rec.Outputs)
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
