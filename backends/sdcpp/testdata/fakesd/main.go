// Command fakesd stands in for stable-diffusion.cpp's programs in tests:
// run as sd-cli (or sd) it is the command-line program, as sd-server the
// HTTP server. It accepts only the flags listed in the help text the tests
// keep (FAKESD_HELP_DIR/sd-cli-help.txt or sd-server-help.txt), requires
// --mmap, checks that every model file it is given exists, prints progress
// bars and log lines in the engine's formats and writes a PNG.
//
// The prompt picks a behaviour: "fail" exits 1 (or answers 500) after an
// error line, "noimage" exits 0 without writing the image, "corrupt"
// writes bytes that are not an image, "hang" starts a child process and
// never returns, "slow" sleeps between steps. Every run appends its
// arguments as one JSON line to FAKESD_LOG when that is set.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// valueFlags take a value although the help shows no placeholder.
var valueFlags = map[string]bool{
	"-s": true, "--seed": true, "--sampling-method": true, "--scheduler": true, "--type": true,
	"--rng": true, "--sampler-rng": true, "--prediction": true, "--lora-apply-mode": true,
	"--vae-tile-size": true, "--vae-relative-tile-size": true, "--sigmas": true, "--skip-layers": true,
	"--high-noise-skip-layers": true, "-r": true, "--ref-image": true, "--cache-mode": true,
	"--cache-option": true, "--cache-preset": true, "--scm-mask": true, "--scm-policy": true,
	"--high-noise-sampling-method": true, "-M": true, "--mode": true, "--preview": true,
}

// short maps short flags to their long names.
var short = map[string]string{}

var modelFlags = []string{"--model", "--diffusion-model", "--high-noise-diffusion-model", "--vae", "--taesd",
	"--clip_l", "--clip_g", "--t5xxl", "--llm", "--llm_vision", "--clip_vision", "--control-net", "--upscale-model"}

func main() {
	if os.Getenv("FAKESD_CHILD") != "" {
		time.Sleep(time.Hour) // the child a hanging engine started
		return
	}
	server := strings.Contains(filepath.Base(os.Args[0]), "server")
	helpName := "sd-cli-help.txt"
	if server {
		helpName = "sd-server-help.txt"
	}
	help, err := os.ReadFile(filepath.Join(os.Getenv("FAKESD_HELP_DIR"), helpName))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakesd: FAKESD_HELP_DIR:", err)
		os.Exit(2)
	}
	known, takes := parseHelp(string(help))
	args := os.Args[1:]
	if len(args) == 1 && (args[0] == "--help" || args[0] == "-h") {
		os.Stdout.Write(help)
		return
	}
	logRun(args)
	opts := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			die("error: unexpected argument %q", a)
		}
		if !known[a] {
			die("error: unknown argument: %s", a)
		}
		if l, ok := short[a]; ok {
			a = l
		}
		if takes[a] || valueFlags[a] {
			if i+1 >= len(args) {
				die("error: missing argument for %s", a)
			}
			i++
			if _, dup := opts[a]; dup {
				die("error: %s given twice", a)
			}
			opts[a] = args[i]
		} else {
			opts[a] = "true"
		}
	}
	if opts["--mmap"] != "true" {
		die("[ERROR] fakesd: genfleet must pass --mmap")
	}
	nModels := 0
	for _, f := range modelFlags {
		if p, ok := opts[f]; ok {
			nModels++
			b := make([]byte, 8)
			fh, err := os.Open(p)
			if err == nil {
				_, err = fh.Read(b)
				fh.Close()
			}
			if err != nil {
				die("[ERROR] model.cpp:1042 - init model loader from file failed: '%s'", p)
			}
		}
	}
	if opts["--model"] == "" && opts["--diffusion-model"] == "" {
		die("[ERROR] stable-diffusion.cpp:212 - the model path is not set")
	}
	fmt.Printf("[INFO ] stable-diffusion.cpp:250 - loading %d model files\n", nModels)
	bar(37, 37) // tensor loading draws the same bar with another total
	if server {
		serve(opts)
		return
	}
	if opts["--prompt"] == "" {
		die("error: the following arguments are required: prompt")
	}
	p := params{
		prompt: opts["--prompt"], width: atoi(opts["--width"], 512), height: atoi(opts["--height"], 512),
		steps: atoi(opts["--steps"], 20), seed: opts["--seed"],
	}
	img, err := generate(p)
	if err != nil {
		die("%v", err)
	}
	out := opts["--output"]
	if out == "" {
		out = "output.png"
	}
	switch {
	case strings.Contains(p.prompt, "noimage"):
		fmt.Println("[INFO ] main.cpp:900 - nothing to save")
		return
	case strings.Contains(p.prompt, "corrupt"):
		os.WriteFile(out, []byte("this is not a png"), 0o644)
		return
	}
	if err := os.WriteFile(out, img, 0o644); err != nil {
		die("[ERROR] main.cpp:910 - save result image to '%s' failed", out)
	}
	fmt.Printf("[INFO ] main.cpp:912 - save result image 0 to '%s' (success)\n", out)
}

type params struct {
	prompt        string
	width, height int
	steps         int
	seed          string
}

// generate prints the step progress and returns the PNG, or fails or
// hangs as the prompt asks.
func generate(p params) ([]byte, error) {
	if strings.Contains(p.prompt, "fail") {
		fmt.Fprintln(os.Stderr, "[WARN ] ggml_extend.hpp:60 - something looks off")
		fmt.Fprintln(os.Stderr, "[ERROR] ggml_extend.hpp:71 - ggml_backend_alloc_ctx_tensors failed: out of memory")
		fmt.Fprintln(os.Stderr, "[INFO ] stable-diffusion.cpp:300 - freeing")
		return nil, fmt.Errorf("[ERROR] stable-diffusion.cpp:2301 - generate failed")
	}
	if strings.Contains(p.prompt, "hang") {
		child := exec.Command(os.Args[0])
		child.Env = append(os.Environ(), "FAKESD_CHILD=1")
		if err := child.Start(); err != nil {
			return nil, err
		}
		if f := os.Getenv("FAKESD_CHILDPID"); f != "" {
			os.WriteFile(f, []byte(strconv.Itoa(child.Process.Pid)), 0o644)
		}
		bar(1, p.steps)
		select {}
	}
	fmt.Printf("[INFO ] stable-diffusion.cpp:3001 - sampling using Euler A method\n")
	for i := 1; i <= p.steps; i++ {
		if strings.Contains(p.prompt, "slow") {
			time.Sleep(50 * time.Millisecond)
		}
		bar(i, p.steps)
	}
	h := fnv.New64a()
	fmt.Fprint(h, p.prompt, p.seed, p.steps)
	v := h.Sum64()
	img := image.NewNRGBA(image.Rect(0, 0, p.width, p.height))
	for y := range p.height {
		for x := range p.width {
			img.Set(x, y, color.NRGBA{uint8(v) + uint8(x), uint8(v>>8) + uint8(y), uint8(v >> 16), 255})
		}
	}
	var buf bytes.Buffer
	png.Encode(&buf, img)
	return buf.Bytes(), nil
}

var outMu sync.Mutex

// bar draws the engine's progress bar as it does: on stdout, redrawn with
// a carriage return, a newline after the last step.
func bar(step, steps int) {
	outMu.Lock()
	defer outMu.Unlock()
	cur := step * 50 / steps
	s := "  |"
	for i := 0; i < 50; i++ {
		switch {
		case i > cur:
			s += " "
		case i == cur && i != 49:
			s += ">"
		default:
			s += "="
		}
	}
	lf := ""
	if step == steps {
		lf = "\n"
	}
	fmt.Printf("\r%s| %d/%d - %.2fit/s\033[K%s", s, step, steps, 12.5, lf)
	os.Stdout.Sync()
}

func serve(opts map[string]string) {
	if ms := atoi(os.Getenv("FAKESD_LOAD_MS"), 0); ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	addr := opts["--listen-ip"] + ":" + opts["--listen-port"]
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sdapi/v1/options", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"samples_format":"png"}`))
	})
	var gen sync.Mutex
	mux.HandleFunc("POST /sdapi/v1/txt2img", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Prompt      string  `json:"prompt"`
			Negative    string  `json:"negative_prompt"`
			Width       int     `json:"width"`
			Height      int     `json:"height"`
			Steps       int     `json:"steps"`
			Seed        int64   `json:"seed"`
			CFGScale    float64 `json:"cfg_scale"`
			BatchSize   int     `json:"batch_size"`
			SamplerName string  `json:"sampler_name"`
			Scheduler   string  `json:"scheduler"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields() // a field the server does not read would be ignored silently
		if err := dec.Decode(&req); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		logRun([]string{"txt2img", req.Prompt, strconv.Itoa(req.Steps), req.SamplerName, req.Scheduler})
		if req.Width <= 0 || req.Height <= 0 || req.Prompt == "" {
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":"invalid params"}`))
			return
		}
		gen.Lock()
		defer gen.Unlock()
		img, err := generate(params{prompt: req.Prompt, width: req.Width, height: req.Height, steps: req.Steps, seed: strconv.FormatInt(req.Seed, 10)})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte(`{"error":"generate_image returned no results"}`))
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"images": []string{base64.StdEncoding.EncodeToString(img)}, "parameters": map[string]any{}, "info": ""})
	})
	fmt.Printf("[INFO ] main.cpp:700 - listening on: %s\n", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		die("[ERROR] main.cpp:701 - %v", err)
	}
}

// parseHelp returns the flags the help lists (short and long forms) and
// those shown with a value placeholder.
func parseHelp(help string) (known, takes map[string]bool) {
	known, takes = map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "-") {
			continue
		}
		var long, sh string
		for _, f := range strings.Fields(strings.ReplaceAll(line, ",", " ")) {
			switch {
			case strings.HasPrefix(f, "--"):
				long = f
			case strings.HasPrefix(f, "-"):
				sh = f
			case strings.HasPrefix(f, "<"):
				takes[long] = true
			}
		}
		known[long] = true
		if sh != "" {
			known[sh] = true
			short[sh] = long
		}
	}
	return known, takes
}

func logRun(args []string) {
	f := os.Getenv("FAKESD_LOG")
	if f == "" {
		return
	}
	b, _ := json.Marshal(map[string]any{"prog": filepath.Base(os.Args[0]), "args": args})
	fh, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	fh.Write(append(b, '\n'))
	fh.Close()
}

func atoi(s string, def int) int {
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	return def
}

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
