// Command fakesd stands in for stable-diffusion.cpp's programs in tests:
// run as sd-cli (or sd) it is the command-line program, as sd-server the
// HTTP server. It behaves as the real programs do where the tests rely on
// it, from copies of their output kept in FAKESD_HELP_DIR
// (backends/sdcpp/testdata, each with the engine commit it came from):
//
//   - flags: it takes only the flags the captured help (sd-cli-help.txt,
//     sd-server-help.txt) lists; an unknown flag gets the engine's error
//     line and exit status 1;
//   - model files: it reads their safetensors headers and refuses, with
//     the engine's own lines and exit status (refusals.txt), a file of no
//     format it reads, tensors of no model it knows (no diffusion model
//     tensor), a model missing a component (text encoder, diffusion model
//     or VAE), and a path that does not exist;
//   - sizes: it rounds a width or height up to a multiple of 64, with the
//     engine's warning, as it does for SD 1.x;
//   - the server applies the <sd_cpp_extra_args>{…}</sd_cpp_extra_args>
//     markup of a prompt (width, height, seed, batch_count,
//     sample_params.sample_steps) as the real one does;
//   - weights load on the first generation of a process or server, logged
//     in the engine's words, mapped with --mmap and read without it; a
//     generation ends with its "generate_image completed" line;
//   - a batch (--batch-count, "batch_size") makes one image per seed
//     seed, seed+1, … (each the image of that seed alone, except with an
//     init image, whose latent the engine samples once with the first
//     seed), each announced
//     with the engine's "generating image: k/n - seed s" line and its own
//     progress bar; sd-cli names them output_0.png, output_1.png, …;
//   - an init image, mask and strength (--init-img, --mask, --strength;
//     /sdapi/v1/img2img with "init_images", "mask", "denoising_strength")
//     change the image, and the progress bar's total is the steps the
//     engine samples for the strength;
//   - LoRAs: sd-cli with --lora-model-dir reads <lora:name:weight> prompt
//     tags and finds each file as the engine does (warning "can not found
//     lora" and going on without it when it is not there); sd-server
//     takes a "lora" list of paths it listed in its LoRA directory at the
//     last GET /sdapi/v1/loras ("invalid lora path" otherwise). A LoRA
//     file that is not safetensors gets the engine's "load lora tensors
//     from … failed" warning and is left out, as the engine does;
//   - the options of genfleet's table (--clip-skip, --eta, --guidance,
//     --flow-shift, --vae-tiling; the server's <sd_cpp_extra_args> keys)
//     change the image.
//
// The prompt picks a fault: "fail" exits 1 (or answers 500) after error
// lines, "exception" makes the server answer 500 with the server_error
// body of an exception, "crash" aborts the process (SIGABRT, as a failed
// GGML_ASSERT does), "noimage" exits 0 without writing the image,
// "corrupt" writes bytes that are not an image, "hang" starts a child
// process and never returns, "slow" sleeps between steps. Every run
// appends its arguments as one JSON line to FAKESD_LOG when that is set.
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
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/genfleet/genfleet/modelformat"
)

// valueFlags take a value although the help shows no placeholder (the
// engine's "manual" options).
var valueFlags = map[string]bool{
	"--seed": true, "--sampling-method": true, "--high-noise-sampling-method": true, "--scheduler": true,
	"--type": true, "--rng": true, "--sampler-rng": true, "--prediction": true, "--lora-apply-mode": true,
	"--sigmas": true, "--hires-sigmas": true, "--skip-layers": true, "--high-noise-skip-layers": true,
	"--ref-image": true, "--ref-video": true, "--ref-video-audio": true, "--ref-audio": true,
	"--cache-mode": true, "--cache-option": true, "--scm-mask": true, "--scm-policy": true,
	"--vae-tile-size": true, "--vae-relative-tile-size": true, "--prompt-file": true, "--negative-prompt-file": true,
	"--mode": true, "--preview": true,
}

// short maps short flags to their long names.
var short = map[string]string{}

// modelFlags are the flags that pass model files, with the prefix the
// engine gives the tensor names of each (its init_model_loader; a full
// checkpoint's names are used as they are).
var modelFlags = []struct{ flag, prefix string }{
	{"--model", ""}, {"--diffusion-model", "model.diffusion_model."},
	{"--high-noise-diffusion-model", "model.high_noise_diffusion_model."},
	{"--vae", "vae."}, {"--taesd", "tae."},
	{"--clip_l", "clip_l."}, {"--clip_g", "clip_g."}, {"--t5xxl", "text_encoders.t5xxl.transformer."},
	{"--llm", "text_encoders.llm."}, {"--llm_vision", "text_encoders.llm.visual."}, {"--clip_vision", "clip_vision."},
	{"--control-net", "control_net."}, {"--upscale-model", "upscale."},
}

// components are the parts a model needs, by the tensor name prefixes
// that provide each. (The real engine knows which each model family
// needs; the stand-in asks every model for a text encoder, a diffusion
// model and a VAE.)
var components = [][]string{
	{"cond_stage_model.", "conditioner.", "text_encoders.", "clip_l.", "clip_g."},
	{"model.diffusion_model."},
	{"first_stage_model.", "vae.", "tae."},
}

var (
	server  bool
	mmap    bool // --mmap given
	helpDir string
)

func main() {
	if os.Getenv("FAKESD_CHILD") != "" {
		time.Sleep(time.Hour) // the child a hanging engine started
		return
	}
	server = strings.Contains(filepath.Base(os.Args[0]), "server")
	helpDir = os.Getenv("FAKESD_HELP_DIR")
	helpName := "sd-cli-help.txt"
	if server {
		helpName = "sd-server-help.txt"
	}
	help, err := os.ReadFile(filepath.Join(helpDir, helpName))
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
		if !known[a] {
			die("[ERROR] common.cpp:325  - error: unknown argument: %s", a)
		}
		if l, ok := short[a]; ok {
			a = l
		}
		if takes[a] || valueFlags[a] {
			if i+1 >= len(args) {
				die("[ERROR] common.cpp:320  - error: invalid parameter for argument: %s", a)
			}
			i++
			if _, dup := opts[a]; dup {
				die("fakesd: %s given twice", a) // stricter than the engine: genfleet never means it
			}
			opts[a] = args[i]
		} else {
			opts[a] = "true"
		}
	}
	mmap = opts["--mmap"] == "true"
	loadModel(opts)
	if server {
		serve(opts)
		return
	}
	if opts["--prompt"] == "" {
		die("[ERROR] common.cpp:1300 - error: the following arguments are required: prompt")
	}
	seed, _ := strconv.ParseInt(opts["--seed"], 10, 64)
	p := params{
		prompt: opts["--prompt"], width: atoi(opts["--width"], 512), height: atoi(opts["--height"], 512),
		steps: atoi(opts["--steps"], 20), seed: seed, batch: atoi(opts["--batch-count"], 1),
		strength: atof(opts["--strength"], 0.75), options: map[string]string{},
	}
	for _, f := range []string{"--clip-skip", "--eta", "--guidance", "--flow-shift", "--vae-tiling"} {
		if v, ok := opts[f]; ok {
			p.options[f] = v
		}
	}
	for _, in := range []struct {
		flag string
		dst  *[]byte
	}{{"--init-img", &p.init}, {"--mask", &p.mask}} {
		if path, ok := opts[in.flag]; ok {
			data, err := readImage(path)
			if err != nil {
				die("[ERROR] main.cpp:790  - load image from '%s' failed", path)
			}
			*in.dst = data
		}
	}
	if dir := opts["--lora-model-dir"]; dir != "" {
		p.prompt, p.loras = cliLoRAs(p.prompt, dir)
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
		fmt.Println("[INFO ] main.cpp:562  - 0/1 images saved")
		return
	case strings.Contains(p.prompt, "corrupt"):
		os.WriteFile(out, []byte("this is not a png"), 0o644)
		return
	}
	for k, data := range img {
		path := out
		if len(img) > 1 {
			ext := filepath.Ext(out)
			path = strings.TrimSuffix(out, ext) + "_" + strconv.Itoa(k) + ext
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			die("[ERROR] main.cpp:486  - save result image to '%s' failed", path)
		}
		fmt.Printf("[INFO ] main.cpp:490  - save result image %d to '%s' (success)\n", k, path)
	}
}

// readImage reads an image file the engine would load.
func readImage(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if _, _, err := image.DecodeConfig(bytes.NewReader(data)); err != nil {
		return nil, err
	}
	return data, nil
}

// loraTagRE is sd-cli's LoRA tag in a prompt.
var loraTagRE = regexp.MustCompile(`<lora:([^:>]+):([^>]+)>`)

// cliLoRAs takes the LoRA tags out of prompt and finds their files as
// sd-cli does: the name as a path (absolute, or in dir), else with one
// of its extensions.
func cliLoRAs(prompt, dir string) (string, []lora) {
	var out []lora
	for _, m := range loraTagRE.FindAllStringSubmatch(prompt, -1) {
		prompt = strings.Replace(prompt, m[0], "", 1)
		mul, err := strconv.ParseFloat(m[2], 32)
		if err != nil {
			continue
		}
		path := m[1]
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, path)
		}
		found := fileExists(path)
		for _, ext := range []string{".gguf", ".safetensors", ".pt", ".ckpt"} {
			if !found && fileExists(path+ext) {
				path, found = path+ext, true
			}
		}
		if !found {
			fmt.Printf("[WARN ] common.cpp:2179 - can not found lora %s\n", filepath.Clean(path))
			continue
		}
		out = append(out, lora{path: path, multiplier: mul})
	}
	return prompt, out
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// loadLoRAs reads each LoRA as the engine does when it applies them: one
// that is not safetensors is left out with the engine's warning. It
// returns what the image depends on.
func loadLoRAs(ls []lora) string {
	var b strings.Builder
	for _, l := range ls {
		data, err := os.ReadFile(l.path)
		if err == nil {
			_, err = modelformat.ParseSafetensorsFile(l.path)
		}
		if err != nil {
			fmt.Printf("[WARN ] stable-diffusion.cpp:1961 - load lora tensors from %s failed\n", l.path)
			continue
		}
		h := fnv.New64a()
		h.Write(data)
		fmt.Fprintf(&b, "%x*%g;", h.Sum64(), l.multiplier)
	}
	return b.String()
}

type lora struct {
	path       string
	multiplier float64
}

// loadModel reads the model files as the engine does before it can
// generate, and refuses them as the engine would.
func loadModel(opts map[string]string) {
	have := map[string]bool{}
	mainPath := ""
	for _, mf := range modelFlags {
		path, ok := opts[mf.flag]
		if !ok {
			continue
		}
		if mainPath == "" && (mf.flag == "--model" || mf.flag == "--diffusion-model") {
			mainPath = path
		}
		fmt.Printf("[INFO ] stable-diffusion.cpp:713  - loading model from '%s'\n", path)
		if _, err := os.Stat(path); err != nil {
			refuse("not-found", path)
		}
		st, err := modelformat.ParseSafetensorsFile(path)
		if err != nil {
			refuse("garbage", path)
		}
		for _, t := range st.Tensors {
			have[mf.prefix+t.Name] = true
		}
	}
	if mainPath == "" {
		die("[ERROR] common.cpp:1420 - error: the following arguments are required: model_path/diffusion_model")
	}
	if !hasPrefix(have, "model.diffusion_model.") {
		refuse("no-version", mainPath)
	}
	for _, prefixes := range components {
		found := false
		for _, p := range prefixes {
			found = found || hasPrefix(have, p)
		}
		if !found {
			refuse("missing-component", mainPath)
		}
	}
	fmt.Println("[INFO ] stable-diffusion.cpp:908  - Version: SD 1.x ")
}

func hasPrefix(names map[string]bool, prefix string) bool {
	for n := range names {
		if strings.HasPrefix(n, prefix) {
			return true
		}
	}
	return false
}

// refuse prints the engine's lines for case name (refusals.txt), with the
// model's path, and exits with the engine's status.
func refuse(name, path string) {
	data, err := os.ReadFile(filepath.Join(helpDir, "refusals.txt"))
	if err != nil {
		die("fakesd: %v", err)
	}
	prog := "sd-cli"
	if server {
		prog = "sd-server"
	}
	head := regexp.MustCompile(`^== (\S+) (\S+) exit (\d+)$`)
	status := -1
	for _, line := range strings.Split(string(data), "\n") {
		if m := head.FindStringSubmatch(line); m != nil {
			if status >= 0 {
				break
			}
			if m[1] == name && m[2] == prog {
				status, _ = strconv.Atoi(m[3])
			}
			continue
		}
		if status >= 0 && line != "" && !strings.HasPrefix(line, "#") {
			fmt.Fprintln(os.Stderr, strings.ReplaceAll(line, "{path}", path))
		}
	}
	if status < 0 {
		die("fakesd: no case %s for %s in refusals.txt", name, prog)
	}
	os.Exit(status)
}

type params struct {
	prompt        string
	width, height int
	steps         int
	batch         int
	seed          int64
	init, mask    []byte  // image files, nil for none
	strength      float64 // with init
	loras         []lora
	options       map[string]string // genfleet's option table, by flag
}

var loadOnce sync.Once

// generate prints the engine's log lines and step progress and returns
// the PNGs (one per batch image), or fails, crashes or hangs as the
// prompt asks.
func generate(p params) ([][]byte, error) {
	start := time.Now()
	if w, h := align(p.width), align(p.height); w != p.width || h != p.height {
		fmt.Printf("[WARN ] stable-diffusion.cpp:4154 - align generation request up %dx%d to %dx%d (multiple=64)\n", p.width, p.height, w, h)
		p.width, p.height = w, h
	}
	fmt.Printf("[INFO ] stable-diffusion.cpp:5628 - generate_image %dx%d\n", p.width, p.height)
	loadOnce.Do(func() {
		// The engine prepares a module's weights on its first use.
		if !mmap {
			bar(686, 686, "MB/s")
			fmt.Println("[INFO ] model_loader.cpp:1304 - loading tensors completed, taking 0.82s (read: 0.63s, memcpy: 0.00s, convert: 0.00s, copy_to_backend: 0.00s)")
			return
		}
		fmt.Println("[INFO ] model_loader.cpp:971  - memory-mapped 686 tensors in 1 files (1270.04 MB), taking 0.01s")
		bar(686, 686, "MB/s")
		fmt.Println("[INFO ] model_loader.cpp:1304 - loading tensors completed, taking 0.20s (read: 0.00s, memcpy: 0.00s, convert: 0.00s, copy_to_backend: 0.00s)")
	})
	switch {
	case strings.Contains(p.prompt, "fail"):
		fmt.Fprintln(os.Stderr, "[WARN ] ggml_extend.hpp:60 - something looks off")
		fmt.Fprintln(os.Stderr, "[ERROR] ggml_extend.hpp:71 - ggml_backend_alloc_ctx_tensors failed: out of memory")
		fmt.Fprintln(os.Stderr, "[INFO ] stable-diffusion.cpp:300 - freeing")
		return nil, fmt.Errorf("[ERROR] main.cpp:952  - generate failed")
	case strings.Contains(p.prompt, "crash"):
		fmt.Fprintln(os.Stderr, "ggml.c:1883: GGML_ASSERT(ggml_can_mul_mat(a, b)) failed")
		abort()
	case strings.Contains(p.prompt, "hang"):
		child := exec.Command(os.Args[0])
		child.Env = append(os.Environ(), "FAKESD_CHILD=1")
		if err := child.Start(); err != nil {
			return nil, err
		}
		if f := os.Getenv("FAKESD_CHILDPID"); f != "" {
			os.WriteFile(f, []byte(strconv.Itoa(child.Process.Pid)), 0o644)
		}
		bar(1, p.steps, "s/it")
		select {}
	}
	fmt.Printf("[INFO ] stable-diffusion.cpp:4380 - sampling using Euler A method\n")
	sampled := p.steps
	if p.init != nil {
		t := int(float32(p.steps) * float32(p.strength))
		if t == p.steps {
			t--
		}
		fmt.Printf("[INFO ] stable-diffusion.cpp:4970 - target t_enc is %d steps\n", t)
		sampled = t + 1
	}
	loras := loadLoRAs(p.loras)
	// What the image depends on besides its seed.
	inputs := fnv.New64a()
	fmt.Fprint(inputs, p.prompt, "|", p.steps, "|", loras, "|", p.options, "|", p.strength, "|")
	inputs.Write(p.init)
	inputs.Write([]byte("|"))
	inputs.Write(p.mask)
	var out [][]byte
	for b := range max(p.batch, 1) {
		seed := p.seed + int64(b)
		fmt.Printf("[INFO ] stable-diffusion.cpp:5679 - generating image: %d/%d - seed %d\n", b+1, max(p.batch, 1), seed)
		for i := 1; i <= sampled; i++ {
			if strings.Contains(p.prompt, "slow") {
				time.Sleep(50 * time.Millisecond)
			}
			bar(i, sampled, "it/s")
		}
		h := fnv.New64a()
		fmt.Fprint(h, inputs.Sum64(), seed)
		if p.init != nil {
			// The engine samples the init image's latent once, with the
			// batch's first seed.
			fmt.Fprint(h, "init latent", p.seed)
		}
		v := h.Sum64()
		img := image.NewNRGBA(image.Rect(0, 0, p.width, p.height))
		for y := range p.height {
			for x := range p.width {
				img.Set(x, y, color.NRGBA{uint8(v) + uint8(x), uint8(v>>8) + uint8(y), uint8(v >> 16), 255})
			}
		}
		var buf bytes.Buffer
		png.Encode(&buf, img)
		out = append(out, buf.Bytes())
	}
	fmt.Printf("[INFO ] stable-diffusion.cpp:5861 - generate_image completed in %.2fs\n", time.Since(start).Seconds())
	return out, nil
}

// abort ends the process by SIGABRT, as the engine's abort() does: the
// signal's default action restored behind the Go runtime's back, so that
// the runtime does not turn it into an exit status.
func abort() {
	var sa struct{ handler, flags, restorer, mask uintptr } // handler 0: SIG_DFL
	syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGABRT), uintptr(unsafe.Pointer(&sa)), 0, 8, 0, 0)
	syscall.Kill(os.Getpid(), syscall.SIGABRT)
	select {}
}

// align rounds v up to a multiple of 64, as the engine does for SD 1.x.
func align(v int) int { return (v + 63) / 64 * 64 }

var outMu sync.Mutex

// bar draws the engine's progress bar as it does: on stdout, redrawn with
// a carriage return, a newline after the last step.
func bar(step, steps int, unit string) {
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
	fmt.Printf("\r%s| %d/%d - %.2f%s\033[K%s", s, step, steps, 12.5, unit, lf)
	os.Stdout.Sync()
}

// extraArgsRE is the server's markup for parameters inside a prompt.
var extraArgsRE = regexp.MustCompile(`<sd_cpp_extra_args>(.*?)</sd_cpp_extra_args>`)

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
	loraDir := opts["--lora-model-dir"]
	var loraMu sync.Mutex
	loraCache := map[string]string{} // path in loraDir → full path, as of the last listing
	mux.HandleFunc("GET /sdapi/v1/loras", func(w http.ResponseWriter, r *http.Request) {
		loraMu.Lock()
		defer loraMu.Unlock()
		loraCache = map[string]string{}
		var list []map[string]string
		filepath.WalkDir(loraDir, func(path string, d os.DirEntry, err error) error {
			if err != nil || !fileExists(path) {
				return nil
			}
			switch strings.ToLower(filepath.Ext(path)) {
			case ".gguf", ".pt", ".pth", ".safetensors":
			default:
				return nil
			}
			rel, _ := filepath.Rel(loraDir, path)
			loraCache[rel] = path
			list = append(list, map[string]string{"name": strings.TrimSuffix(filepath.Base(rel), filepath.Ext(rel)), "path": rel})
			return nil
		})
		json.NewEncoder(w).Encode(list)
	})
	handle := func(w http.ResponseWriter, r *http.Request, img2img bool) {
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
			ClipSkip    *int    `json:"clip_skip"`
			LoRA        []struct {
				Path       string  `json:"path"`
				Multiplier float64 `json:"multiplier"`
			} `json:"lora"`
			InitImages        []string `json:"init_images"`
			Mask              string   `json:"mask"`
			DenoisingStrength *float64 `json:"denoising_strength"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields() // a field the server does not read would be ignored silently
		if err := dec.Decode(&req); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		route := "txt2img"
		if img2img {
			route = "img2img"
		}
		logRun([]string{route, req.Prompt, strconv.Itoa(req.Steps), req.SamplerName, req.Scheduler,
			"batch_size=" + strconv.Itoa(req.BatchSize), "seed=" + strconv.FormatInt(req.Seed, 10),
			fmt.Sprintf("lora=%v", req.LoRA), fmt.Sprintf("init_images=%d", len(req.InitImages)), fmt.Sprintf("mask=%v", req.Mask != "")})
		if req.Width <= 0 || req.Height <= 0 {
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":"width and height must be positive"}`))
			return
		}
		if req.Prompt == "" {
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":"prompt required"}`))
			return
		}
		p := params{prompt: req.Prompt, width: req.Width, height: req.Height, steps: req.Steps, batch: req.BatchSize, seed: req.Seed,
			strength: 0.75, options: map[string]string{}}
		if req.ClipSkip != nil && *req.ClipSkip > 0 {
			p.options["--clip-skip"] = strconv.Itoa(*req.ClipSkip)
		}
		if m := extraArgsRE.FindStringSubmatch(p.prompt); m != nil {
			p.prompt = extraArgsRE.ReplaceAllString(p.prompt, "")
			var x struct {
				Width, Height *int
				Seed          *int64
				BatchCount    *int `json:"batch_count"`
				ClipSkip      *int `json:"clip_skip"`
				SampleParams  struct {
					SampleSteps *int     `json:"sample_steps"`
					Eta         *float64 `json:"eta"`
					FlowShift   *float64 `json:"flow_shift"`
					Guidance    struct {
						Distilled *float64 `json:"distilled_guidance"`
					} `json:"guidance"`
				} `json:"sample_params"`
				VAETiling struct {
					Enabled *bool `json:"enabled"`
				} `json:"vae_tiling_params"`
			}
			if json.Unmarshal([]byte(m[1]), &x) != nil {
				w.WriteHeader(http.StatusBadRequest)
				w.Write([]byte(`{"error":"invalid sd_cpp_extra_args"}`))
				return
			}
			set(&p.width, x.Width)
			set(&p.height, x.Height)
			set(&p.batch, x.BatchCount)
			set(&p.steps, x.SampleParams.SampleSteps)
			if x.Seed != nil {
				p.seed = *x.Seed
			}
			// The same keys as sd-cli's flags, so that the two programs
			// make the same image for the same options.
			for flag, v := range map[string]any{"--clip-skip": x.ClipSkip, "--eta": x.SampleParams.Eta, "--flow-shift": x.SampleParams.FlowShift,
				"--guidance": x.SampleParams.Guidance.Distilled} {
				switch v := v.(type) {
				case *int:
					if v != nil {
						p.options[flag] = strconv.Itoa(*v)
					}
				case *float64:
					if v != nil {
						p.options[flag] = fmt.Sprint(*v)
					}
				}
			}
			if x.VAETiling.Enabled != nil && *x.VAETiling.Enabled {
				p.options["--vae-tiling"] = "true"
			}
			logRun([]string{"sd_cpp_extra_args", m[1]})
		}
		for _, l := range req.LoRA {
			loraMu.Lock()
			full, ok := loraCache[l.Path]
			loraMu.Unlock()
			if !ok {
				w.WriteHeader(http.StatusBadRequest)
				w.Write([]byte(`{"error":"invalid lora path: ` + l.Path + `"}`))
				return
			}
			p.loras = append(p.loras, lora{path: full, multiplier: float64(float32(l.Multiplier))}) // the engine reads a float
		}
		if img2img {
			if len(req.InitImages) == 0 {
				w.WriteHeader(http.StatusBadRequest)
				w.Write([]byte(`{"error":"invalid params"}`))
				return
			}
			var err error
			if p.init, err = base64.StdEncoding.DecodeString(req.InitImages[0]); err != nil {
				w.WriteHeader(http.StatusBadRequest)
				w.Write([]byte(`{"error":"invalid params"}`))
				return
			}
			if req.Mask != "" {
				p.mask, _ = base64.StdEncoding.DecodeString(req.Mask)
			}
			if req.DenoisingStrength != nil && *req.DenoisingStrength >= 0 {
				p.strength = min(*req.DenoisingStrength, 1)
			}
		}
		if strings.Contains(p.prompt, "exception") {
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte(`{"error":"server_error","message":"[json.exception.type_error.302] type must be number, but is string"}`))
			return
		}
		gen.Lock()
		defer gen.Unlock()
		imgs, err := generate(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte(`{"error":"generate_image returned no results"}`))
			return
		}
		var enc []string
		for _, img := range imgs {
			enc = append(enc, base64.StdEncoding.EncodeToString(img))
		}
		json.NewEncoder(w).Encode(map[string]any{"images": enc, "parameters": map[string]any{}, "info": ""})
	}
	mux.HandleFunc("POST /sdapi/v1/txt2img", func(w http.ResponseWriter, r *http.Request) { handle(w, r, false) })
	mux.HandleFunc("POST /sdapi/v1/img2img", func(w http.ResponseWriter, r *http.Request) { handle(w, r, true) })
	fmt.Printf("[INFO ] main.cpp:148  - listening on: http://%s\n", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		die("[ERROR] main.cpp:150 - %v", err)
	}
}

func set(dst *int, v *int) {
	if v != nil {
		*dst = *v
	}
}

// parseHelp returns the flags the help lists (short and long forms) and
// those shown with a value placeholder. Option lines are indented by two
// spaces; their descriptions continue on lines indented further.
func parseHelp(help string) (known, takes map[string]bool) {
	known, takes = map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "  -") || strings.HasPrefix(line, "   ") {
			continue
		}
		head, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
		var long, sh string
		for _, f := range strings.Fields(strings.ReplaceAll(head, ",", " ")) {
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

func atof(s string, def float64) float64 {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return f
	}
	return def
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
