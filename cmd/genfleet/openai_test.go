package main

// OpenAI's images API on a fleet: with Go's HTTP client (always), and with
// OpenAI's own client, the openai npm package run by node (when node and
// the npm registry are there).

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/scheduler"
)

const openaiToken = "sk-genfleet-test"

// newOpenAIFleet is a feature fleet whose API requires a token.
func newOpenAIFleet(t *testing.T, defaultModel string) *fleet {
	t.Helper()
	fl := newFleetWith(t, 1<<20, func(c *scheduler.Config) {
		c.Pool = "cpu"
		c.Uploads = s3x.URL{Bucket: outputsBucket, Key: "uploads/"}
		c.APITokens = []string{openaiToken}
		c.OpenAIDefaultModel = defaultModel
		c.OpenAIModelAliases = map[string]string{"dall-e-3": "demo"}
	})
	fl.token = openaiToken
	fl.startWorker()
	return fl
}

// authed sends a request with the fleet's token.
func (fl *fleet) authed(method, path, ctype string, body []byte, hdr ...string) (int, http.Header, []byte) {
	fl.t.Helper()
	req, err := http.NewRequest(method, fl.api.URL+path, bytes.NewReader(body))
	if err != nil {
		fl.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+openaiToken)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fl.t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	return resp.StatusCode, resp.Header, buf.Bytes()
}

// openaiMask is OpenAI's kind of mask: transparent (to edit) on the
// right half, opaque on the left.
func openaiMask(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			a := uint8(255)
			if x >= w/2 {
				a = 0
			}
			img.SetNRGBA(x, y, color.NRGBA{0, 0, 0, a})
		}
	}
	var buf bytes.Buffer
	png.Encode(&buf, img)
	return buf.Bytes()
}

type imagesResponse struct {
	Created int64 `json:"created"`
	Data    []struct {
		B64JSON string `json:"b64_json"`
		URL     string `json:"url"`
	} `json:"data"`
	Size  string `json:"size"`
	JobID string `json:"job_id"`
}

type openaiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
		JobID   string  `json:"job_id"`
	} `json:"error"`
}

func TestOpenAIImagesAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	fl := newOpenAIFleet(t, "demo")

	// Generations: n images as base64, each a genfleet job's image.
	code, _, b := fl.authed("POST", "/v1/images/generations", "application/json",
		[]byte(`{"prompt":"a red fox","n":2,"size":"64x64","seed":7,"steps":2}`))
	var res imagesResponse
	if code != 200 || json.Unmarshal(b, &res) != nil || len(res.Data) != 2 || res.JobID == "" || res.Size != "64x64" {
		t.Fatalf("generations: %d %s", code, b)
	}
	for k, d := range res.Data {
		png, err := base64.StdEncoding.DecodeString(d.B64JSON)
		_, _, want := fl.authed("GET", fmt.Sprintf("/v1/jobs/%s/images/%d", res.JobID, k), "", nil)
		if err != nil || !bytes.Equal(png, want) {
			t.Errorf("image %d: %v, or not the job's image", k, err)
		}
	}
	_, _, recBody := fl.authed("GET", "/v1/jobs/"+res.JobID, "", nil)
	var rec job.Record
	json.Unmarshal(recBody, &rec)
	if rec.Request == nil || rec.Request.Model != "demo" || rec.Request.Seed != 7 || rec.Request.N != 2 || rec.Request.Width != 64 {
		t.Errorf("the job asked for %+v", rec.Request)
	}
	// An OpenAI model name the scheduler aliases runs its genfleet model;
	// one it does not is refused as an unknown model, naming it.
	code, _, b = fl.authed("POST", "/v1/images/generations", "application/json",
		[]byte(`{"model":"dall-e-3","prompt":"a red fox","size":"64x64","seed":7,"steps":2}`))
	res = imagesResponse{}
	if code != 200 || json.Unmarshal(b, &res) != nil || len(res.Data) != 1 {
		t.Fatalf("aliased model: %d %s", code, b)
	}
	if _, _, recBody = fl.authed("GET", "/v1/jobs/"+res.JobID, "", nil); !strings.Contains(string(recBody), `"model": "demo"`) {
		t.Errorf("the aliased job: %s", recBody)
	}
	if code, _, b = fl.authed("POST", "/v1/images/generations", "application/json",
		[]byte(`{"model":"gpt-image-1","prompt":"a red fox","size":"64x64"}`)); code < 400 || code >= 500 || !strings.Contains(string(b), "gpt-image-1") {
		t.Errorf("unaliased OpenAI model: %d %s; want a 4xx naming it", code, b)
	}
	// response_format url: the API's own image URL, which needs the token.
	code, _, b = fl.authed("POST", "/v1/images/generations", "application/json",
		[]byte(`{"model":"demo","prompt":"a red fox","size":"64x64","response_format":"url","seed":7,"steps":2}`))
	res = imagesResponse{}
	if code != 200 || json.Unmarshal(b, &res) != nil || len(res.Data) != 1 || !strings.HasPrefix(res.Data[0].URL, fl.api.URL+"/v1/jobs/") {
		t.Fatalf("url: %d %s", code, b)
	}
	if code, _, img := fl.authed("GET", strings.TrimPrefix(res.Data[0].URL, fl.api.URL), "", nil); code != 200 || !bytes.HasPrefix(img, []byte("\x89PNG")) {
		t.Errorf("GET %s: %d", res.Data[0].URL, code)
	}

	// Edits: multipart with an image and OpenAI's transparent mask.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	for name, data := range map[string][]byte{"image": pngImage(t, 64, 64, -1), "mask": openaiMask(t, 64, 64)} {
		fw, _ := mw.CreateFormFile(name, name+".png")
		fw.Write(data)
	}
	for k, v := range map[string]string{"prompt": "a blue fox", "model": "demo", "n": "1", "seed": "7", "steps": "2", "quality": "high"} {
		mw.WriteField(k, v)
	}
	mw.Close()
	code, _, b = fl.authed("POST", "/v1/images/edits", mw.FormDataContentType(), mp.Bytes())
	res = imagesResponse{}
	if code != 200 || json.Unmarshal(b, &res) != nil || len(res.Data) != 1 {
		t.Fatalf("edits: %d %s", code, b)
	}
	_, _, recBody = fl.authed("GET", "/v1/jobs/"+res.JobID, "", nil)
	rec = job.Record{}
	json.Unmarshal(recBody, &rec)
	if rec.Request == nil || rec.Request.InitImage == "" || rec.Request.Mask == "" || rec.Request.StrengthValue() != 1 || rec.Request.Width != 64 {
		t.Errorf("the edit's job asked for %+v", rec.Request)
	}
	edited, _ := base64.StdEncoding.DecodeString(res.Data[0].B64JSON)
	out, err := png.Decode(bytes.NewReader(edited))
	in, _ := png.Decode(bytes.NewReader(pngImage(t, 64, 64, -1)))
	if err != nil || toNRGBA(out.At(3, 3)) != toNRGBA(in.At(3, 3)) || toNRGBA(out.At(60, 3)) == toNRGBA(in.At(60, 3)) {
		t.Errorf("the edit changed the opaque part of the mask, or not the transparent one: %v", err)
	}

	// A job that does not finish within the wait: 504 with its id, not to
	// be retried; the job runs on.
	code, hdr, b := fl.authed("POST", "/v1/images/generations", "application/json",
		[]byte(`{"prompt":"a slow fox","size":"64x64","steps":2}`), "X-Genfleet-Wait", "1ms")
	var e openaiError
	if code != 504 || json.Unmarshal(b, &e) != nil || e.Error.JobID == "" || e.Error.Type != "timeout" || hdr.Get("X-Should-Retry") != "false" {
		t.Fatalf("timeout: %d %v %s", code, hdr, b)
	}
	fl.wait(e.Error.JobID, 60*time.Second, nil)
	if rec := fl.get(e.Error.JobID); rec.Status != job.StatusSucceeded {
		t.Errorf("the timed-out job: %s %q", rec.Status, rec.Error)
	}

	// Errors in OpenAI's shape, naming OpenAI's parameter.
	for _, tc := range []struct {
		path, body string
		code       int
		param      string
	}{
		{"/v1/images/generations", `{"model":"nope","prompt":"x"}`, 404, "model"},
		{"/v1/images/generations", `{"prompt":"x","size":"60x64"}`, 400, "size"},
		{"/v1/images/generations", `{"prompt":"x","size":"big"}`, 400, "size"},
		{"/v1/images/generations", `{"prompt":"x","n":0}`, 400, "n"},
		{"/v1/images/generations", `{"prompt":"x","response_format":"gif"}`, 400, "response_format"},
		{"/v1/images/generations", `{"prompt":"x","output_format":"webp"}`, 400, "output_format"},
		{"/v1/images/generations", `{"prompt":"x","stream":true}`, 400, "stream"},
		{"/v1/images/generations", `{"prompt":"x","colour":"red"}`, 400, "colour"},
		{"/v1/images/generations", `{"prompt":""}`, 400, "prompt"},
	} {
		code, _, b := fl.authed("POST", tc.path, "application/json", []byte(tc.body))
		e := openaiError{}
		if code != tc.code || json.Unmarshal(b, &e) != nil || e.Error.Param == nil || *e.Error.Param != tc.param || e.Error.Message == "" {
			t.Errorf("%s: %d %s, want %d naming %s", tc.body, code, b, tc.code, tc.param)
		}
	}
	// The API's token guards these routes too.
	if resp, err := http.Post(fl.api.URL+"/v1/images/generations", "application/json", strings.NewReader(`{"prompt":"x"}`)); err != nil || resp.StatusCode != 401 {
		t.Errorf("without a token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	fl.stopWorkers()
}

//go:embed testdata/openai_client.mjs
var openaiClientScript string

// openaiPackageVersion is the openai npm package the test installs.
const openaiPackageVersion = "6"

// installOpenAIClient installs the openai npm package into a directory
// kept between runs (the user's cache dir) and returns it; it skips the
// test when node or npm is missing or the registry cannot be reached.
func installOpenAIClient(t *testing.T) string {
	t.Helper()
	for _, bin := range []string{"node", "npm"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed: the test with OpenAI's own client needs node and npm", bin)
		}
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "genfleet-test", "openai-node-"+openaiPackageVersion)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai", "package.json")); err == nil {
		return dir
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"name":"genfleet-openai-test","private":true}`), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--loglevel", "error", "openai@"+openaiPackageVersion)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		if os.Getenv("GENFLEET_REQUIRE_NODE") == "1" {
			t.Fatalf("npm install openai: %v\n%s", err, out)
		}
		t.Skipf("npm install openai failed (is the npm registry reachable?): %v\n%s", err, out)
	}
	return dir
}

// TestOpenAINodeClient drives the API with OpenAI's own client, the openai
// npm package: a generation with n=2 and b64_json, an edit with an image
// and a mask, a timeout (504 with the job's id, not retried by the
// client, the job running on) and an error the client parses.
func TestOpenAINodeClient(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir := installOpenAIClient(t)
	fl := newOpenAIFleet(t, "")
	files := t.TempDir()
	imagePath, maskPath := filepath.Join(files, "in.png"), filepath.Join(files, "mask.png")
	os.WriteFile(imagePath, pngImage(t, 64, 64, -1), 0o644)
	os.WriteFile(maskPath, openaiMask(t, 64, 64), 0o644)
	script := filepath.Join(dir, "client-"+strconv.Itoa(os.Getpid())+".mjs")
	if err := os.WriteFile(script, []byte(openaiClientScript), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(script)

	submitted := func() float64 {
		_, b := fl.do("GET", "/metrics", "")
		m := regexp.MustCompile(`genfleet_scheduler_jobs_submitted_total\{result="enqueued"\} (\d+)`).FindSubmatch(b)
		if m == nil {
			return 0
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	before := submitted()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GENFLEET_BASE_URL="+fl.api.URL+"/v1", "GENFLEET_KEY="+openaiToken,
		"GENFLEET_IMAGE="+imagePath, "GENFLEET_MASK="+maskPath)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("node: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	var out struct {
		Gen struct {
			N     int      `json:"n"`
			B64   []string `json:"b64"`
			JobID string   `json:"job_id"`
		} `json:"gen"`
		Edit struct {
			N     int    `json:"n"`
			JobID string `json:"job_id"`
		} `json:"edit"`
		Timeout struct {
			Status int             `json:"status"`
			Error  json.RawMessage `json:"error"`
		} `json:"timeout"`
		NotFound struct {
			Status int             `json:"status"`
			Error  json.RawMessage `json:"error"`
		} `json:"notfound"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("the client's output %q: %v\n%s", stdout.String(), err, stderr.String())
	}
	if out.Gen.N != 2 || out.Gen.JobID == "" {
		t.Fatalf("generate: %+v", out.Gen)
	}
	for k, b64 := range out.Gen.B64 {
		data, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || !bytes.Equal(data, fl.imageK(out.Gen.JobID, k)) {
			t.Errorf("image %d the client got is not the job's: %v", k, err)
		}
	}
	if rec := fl.get(out.Edit.JobID); out.Edit.N != 1 || rec.Request == nil || rec.Request.InitImage == "" || rec.Request.Mask == "" {
		t.Errorf("edit: %+v, job %+v", out.Edit, rec.Request)
	}
	var te struct {
		Type  string `json:"type"`
		JobID string `json:"job_id"`
	}
	if out.Timeout.Status != 504 || json.Unmarshal(out.Timeout.Error, &te) != nil || te.JobID == "" || te.Type != "timeout" {
		t.Fatalf("timeout: %+v", out.Timeout)
	}
	if rec := fl.wait(te.JobID, 60*time.Second, nil); rec.Status != job.StatusSucceeded {
		t.Errorf("the timed-out job: %s %q", rec.Status, rec.Error)
	}
	var nf struct {
		Param string `json:"param"`
		Code  string `json:"code"`
	}
	if out.NotFound.Status != 404 || json.Unmarshal(out.NotFound.Error, &nf) != nil || nf.Param != "model" || nf.Code != "model_not_found" {
		t.Errorf("unknown model: %+v", out.NotFound)
	}
	// The generation, the edit and the timed-out job: three jobs, the
	// 504 not retried into a fourth; the unknown model queued none.
	if got := submitted() - before; got != 3 {
		t.Errorf("%v jobs submitted, want 3", got)
	}
	fl.stopWorkers()
}
