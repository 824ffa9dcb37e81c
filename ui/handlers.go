package ui

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/genfleet/genfleet/job"
)

// fleetData is the fleet page: hosts and queues.
type fleetData struct {
	Hosts  []hostCard
	Queues []queueGroup
	// Errors are the API's answers that kept a part from showing.
	HostsError, QueuesError string
}

func (u *UI) loadFleet(r *http.Request, s *session, hosts, queues bool) fleetData {
	var d fleetData
	var w workersJSON
	werr := u.getJSON(r.Context(), s, "/v1/workers", &w)
	if hosts {
		if werr != nil {
			d.HostsError = werr.Error()
		} else {
			var m modelsJSON
			// Without the registry's list, files show by digest and by
			// what the workers report having loaded.
			_ = u.getJSON(r.Context(), s, "/v1/models", &m)
			d.Hosts = hostCards(&w, &m, time.Now())
		}
	}
	if queues {
		var q queuesJSON
		if err := u.getJSON(r.Context(), s, "/v1/queues", &q); err != nil {
			d.QueuesError = err.Error()
		} else {
			d.Queues = queueGroups(&q, &w)
		}
	}
	return d
}

func (u *UI) fleetPage(w http.ResponseWriter, r *http.Request, s *session) {
	u.render(w, r, http.StatusOK, "fleet", &view{Title: "Fleet", Nav: "fleet", Session: s, Data: u.loadFleet(r, s, true, true)})
}

func (u *UI) hostsPart(w http.ResponseWriter, r *http.Request, s *session) {
	u.renderPart(w, "hosts", u.loadFleet(r, s, true, false))
}

func (u *UI) queuesPart(w http.ResponseWriter, r *http.Request, s *session) {
	u.renderPart(w, "queues", u.loadFleet(r, s, false, true))
}

// jobsData is the jobs page: the filter and the jobs it lets through.
type jobsData struct {
	Status, Model string
	Statuses      []string
	Jobs          []jobCard
	Query         string // the filter as a query string, for the fragment
	Error         string
}

var statuses = []string{"queued", "running", "succeeded", "failed", "cancelled"}

// jobsLimit is the number of jobs the page lists.
const jobsLimit = 48

func (u *UI) loadJobs(r *http.Request, s *session) (jobsData, int) {
	d := jobsData{Status: r.URL.Query().Get("status"), Model: strings.TrimSpace(r.URL.Query().Get("model")), Statuses: statuses}
	q := url.Values{"limit": {strconv.Itoa(jobsLimit)}}
	if d.Status != "" {
		q.Set("status", d.Status)
	}
	if d.Model != "" {
		q.Set("model", d.Model)
	}
	d.Query = q.Encode()
	var body struct{ Jobs []jobJSON }
	if err := u.getJSON(r.Context(), s, "/v1/jobs?"+d.Query, &body); err != nil {
		d.Error = err.Error()
		var ae *apiError
		if errors.As(err, &ae) && ae.Code == http.StatusBadRequest {
			return d, http.StatusBadRequest
		}
		return d, http.StatusBadGateway
	}
	now := time.Now()
	for i := range body.Jobs {
		d.Jobs = append(d.Jobs, jobCardOf(&body.Jobs[i], now))
	}
	return d, http.StatusOK
}

func (u *UI) jobsPage(w http.ResponseWriter, r *http.Request, s *session) {
	d, code := u.loadJobs(r, s)
	u.render(w, r, code, "jobs", &view{Title: "Jobs", Nav: "jobs", Session: s, Data: d})
}

func (u *UI) jobsPart(w http.ResponseWriter, r *http.Request, s *session) {
	d, _ := u.loadJobs(r, s)
	u.renderPart(w, "jobs", d)
}

// jobData is one job's page.
type jobData struct {
	jobCard
	Final, Cancellable bool
	Request            []field
	Images             []image
	Bars               []bar
	Total              string
	Route, Worker      string
	Created, Started   string
	Finished           string
	Attempt            int
	Compact            bool // the submit page's view: status, progress, image
	CSRF               string
}

// field is one line of a job's request.
type field struct{ Name, Value string }

// image is one image of a job.
type image struct {
	URL, Alt      string
	Width, Height int
	Bytes, SHA256 string
}

func jobDataOf(r *jobJSON, now time.Time) jobData {
	d := jobData{jobCard: jobCardOf(r, now), Final: r.Status.Terminal(), Attempt: r.Attempt}
	d.Cancellable = !d.Final
	if q := r.Request; q != nil {
		d.Request = []field{{"model", q.Model}, {"prompt", q.Prompt}}
		if q.NegativePrompt != "" {
			d.Request = append(d.Request, field{"negative prompt", q.NegativePrompt})
		}
		d.Request = append(d.Request, field{"size", strconv.Itoa(q.Width) + " × " + strconv.Itoa(q.Height)},
			field{"steps", strconv.Itoa(q.Steps)}, field{"seed", strconv.FormatInt(q.Seed, 10)},
			field{"guidance", strconv.FormatFloat(q.Guidance, 'g', -1, 64)})
		for _, f := range []field{{"sampling method", q.SamplingMethod}, {"scheduler", q.Scheduler}} {
			if f.Value != "" {
				d.Request = append(d.Request, f)
			}
		}
	}
	esc := url.PathEscape(r.ID)
	switch {
	case len(r.Outputs) > 0:
		for k, o := range r.Outputs {
			d.Images = append(d.Images, imageOf(o, Prefix+"/img/"+esc+"/images/"+strconv.Itoa(k), "image "+strconv.Itoa(k+1)+" of job "+r.ID))
		}
	case r.Status == job.StatusSucceeded && r.Result != nil:
		d.Images = append(d.Images, imageOf(*r.Result, Prefix+"/img/"+esc+"/image", "the image of job "+r.ID))
	}
	if r.Request != nil && len(d.Images) > 0 && r.Request.Prompt != "" {
		for i := range d.Images {
			d.Images[i].Alt += ": " + r.Request.Prompt
		}
	}
	d.Bars, d.Total = waterfall(r.Timings)
	if rt := r.Route; rt != nil {
		d.Route = rt.Queue
		if rt.Reason != "" {
			d.Route += ": " + rt.Reason
		}
	} else {
		d.Route = r.Queue
	}
	if wk := r.Worker; wk != nil {
		d.Worker = wk.Host + " (pid " + strconv.Itoa(wk.PID) + ", " + wk.Backend + ")"
	}
	stamp := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC") + " (" + ago(now, t) + " ago)"
	}
	d.Created, d.Started, d.Finished = stamp(r.CreatedAt), stamp(r.StartedAt), stamp(r.FinishedAt)
	return d
}

func imageOf(o job.Output, src, alt string) image {
	im := image{URL: src, Alt: alt, Width: o.Width, Height: o.Height, SHA256: o.SHA256}
	if o.Bytes > 0 {
		im.Bytes = strconv.FormatInt(o.Bytes, 10) + " bytes"
	}
	return im
}

// loadJob reads job id; on failure it returns the code and message to
// show.
func (u *UI) loadJob(r *http.Request, s *session, id string) (*jobJSON, int, string) {
	var rec jobJSON
	if err := u.getJSON(r.Context(), s, "/v1/jobs/"+url.PathEscape(id), &rec); err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			return nil, ae.Code, ae.Message
		}
		return nil, http.StatusBadGateway, err.Error()
	}
	return &rec, http.StatusOK, ""
}

func (u *UI) jobPage(w http.ResponseWriter, r *http.Request, s *session) {
	rec, code, msg := u.loadJob(r, s, r.PathValue("id"))
	if rec == nil {
		u.renderError(w, r, s, code, msg)
		return
	}
	d := jobDataOf(rec, time.Now())
	d.CSRF = s.CSRF
	v := &view{Title: "Job " + d.Short, Nav: "jobs", Session: s, Data: d}
	if !d.Final {
		v.NoScriptRefresh = 2
	}
	u.render(w, r, http.StatusOK, "job", v)
}

func (u *UI) jobPart(w http.ResponseWriter, r *http.Request, s *session) {
	rec, code, msg := u.loadJob(r, s, r.PathValue("id"))
	if rec == nil {
		http.Error(w, msg, code)
		return
	}
	d := jobDataOf(rec, time.Now())
	d.Compact = r.URL.Query().Get("compact") == "1"
	d.CSRF = s.CSRF
	u.renderPart(w, "job", d)
}

// image passes a job's image, or its thumbnail, through from the API,
// with the API's caching headers and its answer to a conditional request.
func (u *UI) image(w http.ResponseWriter, r *http.Request, s *session) {
	id := url.PathEscape(r.PathValue("id"))
	path := "/v1/jobs/" + id + "/"
	switch kind := r.PathValue("kind"); {
	case r.PathValue("k") != "":
		path += "images/" + url.PathEscape(r.PathValue("k"))
	case kind == "image":
		path += "image"
	case kind == "thumbnail":
		path += "thumbnail"
		if v := r.URL.Query().Get("w"); v != "" {
			path += "?w=" + url.QueryEscape(v)
		}
	default:
		http.NotFound(w, r)
		return
	}
	a := u.call(r.Context(), s.token, http.MethodGet, path, nil, "If-None-Match", r.Header.Get("If-None-Match"))
	for _, h := range []string{"Content-Type", "ETag", "Cache-Control", "Content-Length"} {
		if v := a.header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(a.code)
	_, _ = w.Write(a.body)
}

// submitData is the submit form, filled in with what was sent.
type submitData struct {
	Model, Prompt, Negative    string
	Width, Height, Steps, Seed string
	Models                     []string
	Nonce                      string
	Error, Field               string
}

func newNonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (u *UI) models(r *http.Request, s *session) []string {
	var m modelsJSON
	if err := u.getJSON(r.Context(), s, "/v1/models", &m); err != nil {
		return nil
	}
	var out []string
	for _, x := range m.Models {
		out = append(out, x.Name)
	}
	return out
}

func (u *UI) submitPage(w http.ResponseWriter, r *http.Request, s *session) {
	d := submitData{Width: "256", Height: "256", Steps: "8", Nonce: newNonce(), Models: u.models(r, s)}
	if len(d.Models) > 0 {
		d.Model = d.Models[0]
	}
	u.render(w, r, http.StatusOK, "submit", &view{Title: "Submit", Nav: "submit", Session: s, Data: d})
}

// submit sends the form to POST /v1/jobs, with the form's nonce as the
// Idempotency-Key so that sending the form twice makes one job. A browser
// without the script is sent to the job's page; the script (Accept:
// application/json) gets {"id","url"} or the API's error.
func (u *UI) submit(w http.ResponseWriter, r *http.Request, s *session) {
	f := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	d := submitData{Model: f("model"), Prompt: r.PostFormValue("prompt"), Negative: r.PostFormValue("negative_prompt"),
		Width: f("width"), Height: f("height"), Steps: f("steps"), Seed: f("seed"), Nonce: f("nonce")}
	if d.Nonce == "" {
		d.Nonce = newNonce()
	}
	body, field, err := requestOf(d)
	var a apiAnswer
	if err == nil {
		a = u.call(r.Context(), s.token, http.MethodPost, "/v1/jobs", strings.NewReader(body),
			"Content-Type", "application/json", "Idempotency-Key", "ui-"+d.Nonce)
		if a.code != http.StatusAccepted {
			ae := errorOf(a)
			err, field = ae, ae.Field
		}
	}
	wantJSON := strings.Contains(r.Header.Get("Accept"), "application/json")
	if err != nil {
		msg := err.Error()
		var ae *apiError
		code := http.StatusBadRequest
		if errors.As(err, &ae) {
			msg, code = ae.Message, ae.Code
		}
		if wantJSON {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": msg, "field": field})
			return
		}
		d.Error, d.Field, d.Models = msg, field, u.models(r, s)
		u.render(w, r, code, "submit", &view{Title: "Submit", Nav: "submit", Session: s, Data: d})
		return
	}
	var acc struct{ ID string }
	_ = json.Unmarshal(a.body, &acc)
	dest := Prefix + "/jobs/" + url.PathEscape(acc.ID)
	if wantJSON {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]string{"id": acc.ID, "url": dest})
		return
	}
	http.Redirect(w, r, dest, http.StatusSeeOther)
}

// requestOf makes the JSON request of the form; fields left empty take
// the API's defaults. A number that does not parse is an error naming
// its field.
func requestOf(d submitData) (string, string, error) {
	req := map[string]any{"model": d.Model, "prompt": d.Prompt}
	if d.Negative != "" {
		req["negative_prompt"] = d.Negative
	}
	for _, n := range []struct{ field, v string }{{"width", d.Width}, {"height", d.Height}, {"steps", d.Steps}, {"seed", d.Seed}} {
		if n.v == "" {
			continue
		}
		x, err := strconv.ParseInt(n.v, 10, 64)
		if err != nil {
			return "", n.field, &job.FieldError{Field: n.field, Message: strconv.Quote(n.v) + " is not a whole number"}
		}
		req[n.field] = x
	}
	b, err := json.Marshal(req)
	return string(b), "", err
}

// cancel sends DELETE /v1/jobs/{id} and goes back to the job's page.
func (u *UI) cancel(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	a := u.call(r.Context(), s.token, http.MethodDelete, "/v1/jobs/"+url.PathEscape(id), nil)
	if a.code != http.StatusOK && a.code != http.StatusAccepted {
		u.renderError(w, r, s, a.code, errorOf(a).Message)
		return
	}
	http.Redirect(w, r, Prefix+"/jobs/"+url.PathEscape(id), http.StatusSeeOther)
}
