package sdcpp

import "regexp"

// The engine's log lines the backend reads, besides progress bars
// (output.go) and error lines. Those about a model the engine cannot run
// are stable-diffusion.cpp's own, as testdata/refusals.txt keeps them
// (captured from sd-cli and sd-server of the commit named there, by
// scripts/sdcpp-help.sh); TestRefusalsAreRecognised checks every captured
// case against these expressions.
var (
	// refusalRE matches a line that means the engine refused the model's
	// files: of no format it reads ("unknown format"), tensors of no model
	// it knows ("get sd version from file failed"), tensors missing or of
	// the wrong shape for the model it detected ("… not in model
	// metadata", "… has wrong shape in model metadata", "model metadata
	// validation failed"; "… in model file" when it loads them). Retrying
	// cannot help: the job fails at once, with these lines.
	refusalRE = regexp.MustCompile(`unknown format |get sd version from file failed|model metadata validation failed|in model metadata|has wrong shape in model file`)
	// missingFileRE matches the engine's line for a model file path that
	// does not exist. The engine then says it cannot tell the model's
	// version, as for a refused file; but the worker holds the file in its
	// cache while the engine runs, so a missing one is a fault of the host:
	// retried.
	missingFileRE = regexp.MustCompile(`\] model_loader\.cpp:\d+ +- file .* not found$`)
	// loadRE matches the engine's report of preparing a module's weights,
	// which it does on the module's first use (the first generation of a
	// process or server): "memory-mapped 686 tensors in 1 files
	// (1270.04 MB), taking 0.00s" and "loading tensors completed, taking
	// 0.20s (read: …)".
	loadRE = regexp.MustCompile(`(?:memory-mapped \d+ tensors in \d+ files \([0-9.]+ MB\)|loading tensors completed), taking ([0-9.]+)s`)
	// doneRE matches the engine's line at the end of a generation:
	// "generate_image completed in 18.57s".
	doneRE = regexp.MustCompile(`generate_image completed in [0-9.]+s`)
	// batchRE matches the engine's line at the start of each image of a
	// batch: "generating image: 2/4 - seed 43".
	batchRE = regexp.MustCompile(`generating image: (\d+)/(\d+) - seed -?\d+`)
	// loraMissingRE matches sd-cli's warning for a <lora:…> tag whose
	// file it did not find ("can not found lora /tmp/…/loras/x"); it then
	// goes on without the LoRA.
	loraMissingRE = regexp.MustCompile(`can not found lora `)
	// loraFailedRE matches the engine's warning for a LoRA file it could
	// not read ("load lora tensors from … failed"); it goes on without it.
	loraFailedRE = regexp.MustCompile(`load lora tensors from .* failed|required lora load failed`)
)
