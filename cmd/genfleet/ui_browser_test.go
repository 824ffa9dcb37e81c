package main

// The web page in a real browser: Debian's chromium, headless, driven with
// chromedp, against a real fleet (redis-server, versitygw, worker
// processes). Screenshots of each view are written to
// $GENFLEET_UI_ARTIFACTS, or to a temporary directory the log names.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/hibiken/asynq"

	"github.com/genfleet/genfleet/job"
	"github.com/genfleet/genfleet/scheduler"
)

// findChromium returns the browser to drive: $GENFLEET_CHROMIUM, or the
// first of Debian's chromium and its usual other names on PATH.
func findChromium() string {
	if p := os.Getenv("GENFLEET_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless_shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser starts a headless chromium for the test, on a fresh profile,
// with nothing to reach but loopback, and collects what the page writes
// to its console at level error (a script error or a blocked resource).
func browser(t *testing.T) (ctx context.Context, consoleErrors func() []string) {
	t.Helper()
	bin := findChromium()
	if bin == "" {
		msg := "chromium not installed: the browser test needs Debian's chromium (`make deps` installs it as root: apt-get install chromium), or GENFLEET_CHROMIUM set to a Chrome binary"
		if os.Getenv("GENFLEET_REQUIRE_SERVICES") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// Start the browser now, on a context without a deadline.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	var mu sync.Mutex
	var errs []string
	go func() {
		for m, err := range chromedp.Console(ctx) {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%s (%s)", m.Text, m.URL))
				mu.Unlock()
			}
		}
	}()
	return ctx, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), errs...) }
}

// artifacts is the directory the screenshots go to.
func artifacts(t *testing.T) string {
	dir := os.Getenv("GENFLEET_UI_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "ui-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots of the page go to %s", dir)
	return dir
}

// TestUIInABrowser loads the page in chromium against a real fleet: it
// signs in, sees the hosts (one up, one gone), submits a job through the
// form and sees its progress and image, sees the job's thumbnail appear
// in the list without a reload, opens its page and sees the waterfall,
// walks the page with the keyboard, reads the lists with scripts off, and
// fits a narrow window.
func TestUIInABrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	ctx, consoleErrors := browser(t)
	const token = "ui-browser-token"
	fl := newFleetWith(t, 4<<20, func(c *scheduler.Config) {
		c.APITokens = []string{token}
		c.QueueSampleInterval = 250 * time.Millisecond
	})
	samplerCtx, stopSampler := context.WithCancel(context.Background())
	samplerDone := make(chan struct{})
	go func() { defer close(samplerDone); fl.sched.RunSampler(samplerCtx) }()
	t.Cleanup(func() { stopSampler(); <-samplerDone })
	dir := artifacts(t)

	// Two hosts; box-b dies at once and must show as gone.
	fl.startWorkerOn("box-a", fl.cacheDir)
	b := fl.startWorkerOn("box-b", t.TempDir())
	base := fl.api.URL + "/ui"

	run := func(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := chromedp.Do(c, steps...); err != nil {
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("main")))
			t.Fatalf("%s: %v\nconsole errors: %v\npage:\n%s", what, err, consoleErrors(), html)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	// until waits for a JavaScript condition.
	until := func(what, expr string, timeout time.Duration) {
		t.Helper()
		run(what, timeout+5*time.Second, chromedp.Func(func(c context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(timeout), chromedp.WithPollingInterval(100*time.Millisecond))(c, tg)
			return err
		}))
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// 1. Sign in, where the page sends us.
	run("sign in", 30*time.Second,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Submit(chromedp.ID("token")),
		chromedp.WaitVisible(chromedp.ID("hosts-h")),
	)
	until("both hosts listed", `document.querySelectorAll('#hosts .host').length >= 1`, 20*time.Second)
	_ = b.Process.Kill() // no goodbye: its heartbeat just stops
	_ = b.Wait()

	// 2. Submit through the form; the result region shows progress, then
	// the image.
	run("submit the form", 60*time.Second,
		chromedp.Navigate(base+"/submit"),
		chromedp.WaitVisible(chromedp.ID("prompt")),
		chromedp.SendKeys(chromedp.ID("prompt"), "a red fox in the snow"),
		chromedp.SetValue(chromedp.ID("width"), "192"),
		chromedp.SetValue(chromedp.ID("height"), "192"),
		chromedp.SetValue(chromedp.ID("steps"), "6"),
		chromedp.SetValue(chromedp.ID("seed"), "7"),
		chromedp.Click(chromedp.ID("generate")),
		chromedp.WaitVisible(chromedp.ID("result")),
	)
	until("the image appears in the result", `(() => { const i = document.querySelector('#result-body img'); return !!i && i.complete && i.naturalWidth === 192; })()`, 60*time.Second)
	if s := eval(`document.querySelector('#result-body .statusline').textContent`); !strings.Contains(s, "succeeded") {
		t.Fatalf("result status %q", s)
	}
	shot("submit.png")

	// 3. The jobs list: the job's thumbnail; then a job submitted
	// elsewhere appears without a reload, and a failing one too.
	run("jobs page", 30*time.Second, chromedp.Navigate(base+"/jobs"), chromedp.WaitVisible(chromedp.CSS(".jobs")))
	until("the thumbnail loads", `(() => { const i = document.querySelector('.jobs img.thumb'); return !!i && i.complete && i.naturalWidth > 0 && i.getAttribute('src').includes('/thumbnail'); })()`, 20*time.Second)
	if eval(`document.querySelector('.jobs img.thumb').naturalWidth + ''`) != "192" {
		t.Fatalf("thumbnail is %s px wide, want the image's 192 (never scaled up)", eval(`document.querySelector('.jobs img.thumb').naturalWidth + ''`))
	}
	apiSubmit(t, fl.api.URL, token, `{"model":"demo","prompt":"a lighthouse at dusk","seed":3,"width":192,"height":192,"steps":6}`)
	p := job.NewProducer(asynq.RedisClientOpt{Addr: fl.redis.Addr})
	defer p.Close()
	if _, err := p.Enqueue(context.Background(), "", job.Request{Model: "ghost-model", Prompt: "a model nobody pushed", Width: 64, Height: 64, Steps: 1}); err != nil {
		t.Fatal(err)
	}
	until("new jobs appear without a reload", `document.querySelectorAll('.jobs img.thumb').length === 2 && document.querySelectorAll('.jobs .job-failed').length === 1`, 30*time.Second)
	until("both thumbnails loaded", `[...document.querySelectorAll('.jobs img.thumb')].every(i => i.complete && i.naturalWidth > 0)`, 10*time.Second)
	shot("jobs.png")

	// 4. The form's job's page: its request, image and waterfall.
	href := eval(`[...document.querySelectorAll('.jobs a.card')].find(a => a.textContent.includes('a red fox in the snow')).getAttribute('href')`)
	run("open the job", 20*time.Second,
		chromedp.Click(chromedp.CSS(`.jobs a.card[href="`+href+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(".waterfall")),
	)
	for _, ph := range []string{"queue wait", "fetch", "generate", "encode", "store"} {
		if !strings.Contains(eval(`document.querySelector('.waterfall').textContent`), ph) {
			t.Fatalf("waterfall lacks %q: %s", ph, eval(`document.querySelector('.waterfall').textContent`))
		}
	}
	// Each bar is drawn, and they run left to right.
	if got := eval(`(() => { const r = [...document.querySelectorAll('.waterfall rect')].map(e => e.getBoundingClientRect()); return r.length >= 5 && r.every(b => b.width > 0) && r.every((b, i) => i === 0 || b.left >= r[i-1].left - 1) ? 'ok' : JSON.stringify(r); })()`); got != "ok" {
		t.Fatalf("waterfall bars: %s", got)
	}
	until("the job's image", `(() => { const i = document.querySelector('.images img'); return !!i && i.complete && i.naturalWidth === 192; })()`, 10*time.Second)
	if !strings.Contains(eval(`document.querySelector('.pairs').textContent`), "a red fox in the snow") {
		t.Fatalf("request not shown: %s", eval(`document.querySelector('.pairs').textContent`))
	}
	shot("job.png")

	// 5. The fleet: box-a warm with the model, box-b gone, the queues with
	// their history.
	run("fleet page", 20*time.Second, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(".hosts")))
	until("box-b shows as gone", `[...document.querySelectorAll('.host.gone h3')].some(h => h.textContent === 'box-b')`, 30*time.Second)
	until("box-a holds the model", `[...document.querySelectorAll('.host:not(.gone) table.models th[scope=row]')].some(th => th.textContent.startsWith('demo'))`, 10*time.Second)
	until("the queue history is drawn", `document.querySelectorAll('.queues svg.sparkline polyline').length >= 1`, 20*time.Second)
	shot("fleet.png")

	// 6. The keyboard: skip link first, then the navigation, each focus
	// visible; the skip link moves the focus to the content.
	run("keyboard", 10*time.Second, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(".hosts")))
	var order []string
	for range 6 {
		run("tab", 5*time.Second, chromedp.KeyEvent(kb.Tab))
		order = append(order, eval(`document.activeElement.textContent.trim()`))
		if o := eval(`getComputedStyle(document.activeElement).outlineStyle`); o == "none" {
			t.Fatalf("focus on %q is not visible (outline-style none)", order[len(order)-1])
		}
	}
	if got := strings.Join(order, " | "); got != "Skip to content | genfleet | Fleet | Jobs | Submit | Sign out" {
		t.Fatalf("tab order: %s", got)
	}
	run("skip link", 10*time.Second, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(".hosts")),
		chromedp.KeyEvent(kb.Tab), chromedp.KeyEvent(kb.Enter))
	if id := eval(`document.activeElement.id`); id != "main" {
		t.Fatalf("after the skip link the focus is on %q, want main", id)
	}
	run("submit form by keyboard", 10*time.Second, chromedp.Navigate(base+"/submit"), chromedp.WaitVisible(chromedp.ID("model")), chromedp.Focus(chromedp.ID("model")))
	order = []string{eval(`document.activeElement.id`)}
	for range 6 {
		run("tab", 5*time.Second, chromedp.KeyEvent(kb.Tab))
		order = append(order, eval(`document.activeElement.id`))
	}
	if got := strings.Join(order, " "); got != "model prompt width height steps seed generate" {
		t.Fatalf("form tab order: %s", got)
	}

	// 7. Scripts off: the lists are there all the same.
	run("scripts off", 20*time.Second,
		chromedp.Func(func(c context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(c, tg, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
			return err
		}),
		chromedp.Navigate(base+"/jobs"),
		chromedp.WaitVisible(chromedp.CSS(".jobs img.thumb")),
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(".host h3")),
		chromedp.WaitVisible(chromedp.CSS("table.queues")),
		chromedp.Func(func(c context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(c, tg, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: false})
			return err
		}),
	)

	// 8. A narrow window: nothing wider than the screen.
	run("narrow", 20*time.Second, chromedp.EmulateViewport(360, 760), chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(".hosts")))
	for _, page := range []string{"/", "/jobs", "/submit"} {
		run("narrow "+page, 20*time.Second, chromedp.Navigate(base+page), chromedp.WaitVisible(chromedp.CSS("main h1")))
		if w := eval(`document.documentElement.scrollWidth <= window.innerWidth ? 'fits' : document.documentElement.scrollWidth + 'px'`); w != "fits" {
			t.Fatalf("%s is %s wide in a 360px window", page, w)
		}
		if page == "/" {
			shot("narrow.png")
		}
	}
	if errs := consoleErrors(); len(errs) > 0 {
		t.Fatalf("the page logged errors: %v", errs)
	}
	fl.stopWorkers()
}

// apiSubmit posts a job to the API with the bearer token.
func apiSubmit(t *testing.T, api, token, body string) {
	t.Helper()
	req, _ := http.NewRequest("POST", api+"/v1/jobs", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatal(errors.New(string(b)))
	}
}
