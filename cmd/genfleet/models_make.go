package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/genfleet/genfleet/backends/refgen"
	"github.com/genfleet/genfleet/backends/sdcpp/sd1"
	"github.com/genfleet/genfleet/internal/cli"
)

// Architectures `genfleet models make` writes.
const (
	archRefgen     = "refgen"
	archRefgenLoRA = "refgen-lora"
	archSD1        = "sd1"
)

func cmdModelsMake(args []string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("models make", stderr)
	arch := f.String("arch", archRefgen, "what to write: "+archRefgen+" (the built-in engine's reference model, any --size), "+
		archRefgenLoRA+" (a LoRA for it, to push with --kind lora) or "+
		archSD1+" (a random-weight SD 1.x checkpoint that stable-diffusion.cpp loads)")
	rank := f.Int("rank", 4, "the LoRA's rank (--arch "+archRefgenLoRA+")")
	size := f.String("size", "64MiB", "file size, e.g. 64MiB or 4GiB (--arch "+archRefgen+")")
	seed := f.Uint64("seed", 1, "weights seed; the same arguments and seed give the same bytes")
	out := f.String("out", "", "output file; with --split, a directory (required)")
	split := f.Bool("split", false, "write the checkpoint's components as separate files for models push --file ROLE=FILE (--arch "+archSD1+")")
	dtype := f.String("dtype", string(sd1.F16), "type of the weight matrices: f16 (safetensors), q8_0 or q4_0 (GGUF) (--arch "+archSD1+")")
	if err := f.ParseArgs(args, 0); err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintln(stderr, "--out is required")
		return cli.ErrUsage
	}
	set := f.Visited()
	only := func(arch string, names ...string) error {
		for _, name := range names {
			if set[name] {
				return fmt.Errorf("--%s does not apply to --arch %s", name, arch)
			}
		}
		return nil
	}
	if *arch != archRefgenLoRA {
		if err := only(*arch, "rank"); err != nil {
			return err
		}
	}
	switch *arch {
	case archRefgenLoRA:
		if err := only(*arch, "split", "dtype", "size"); err != nil {
			return err
		}
		return makeRefgenLoRA(*out, refgen.LoRAOptions{Seed: *seed, Rank: *rank}, stdout)
	case archRefgen:
		for _, name := range []string{"split", "dtype"} {
			if set[name] {
				return fmt.Errorf("--%s applies to --arch %s only", name, archSD1)
			}
		}
		return makeRefgen(*out, *size, *seed, stdout)
	case archSD1:
		if set["size"] {
			return fmt.Errorf("--size applies to --arch %s only: an %s checkpoint's size follows from its architecture and --dtype", archRefgen, archSD1)
		}
		d, err := sd1.ParseDType(*dtype)
		if err != nil {
			return fmt.Errorf("--dtype: %w", err)
		}
		return makeSD1(*out, *split, sd1.Options{Seed: *seed, DType: d}, stdout, stderr)
	}
	return fmt.Errorf("--arch %q: want %s, %s or %s", *arch, archRefgen, archRefgenLoRA, archSD1)
}

// makeRefgenLoRA writes a reference LoRA to out (temp file, rename) and
// prints how to push it.
func makeRefgenLoRA(out string, o refgen.LoRAOptions, stdout io.Writer) error {
	err := writeAtomic(out, func(w io.Writer) error { return refgen.MakeLoRA(w, o) })
	if err != nil {
		return err
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (LoRA, %d bytes, rank %d, seed %d)\n", out, st.Size(), o.Rank, o.Seed)
	fmt.Fprintf(stdout, "push with: genfleet models push %s s3://BUCKET/KEY --name NAME --kind lora\n", out)
	return nil
}

func makeRefgen(out, size string, seed uint64, stdout io.Writer) error {
	n, err := cli.ParseSize(size)
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	start := time.Now()
	if err := writeModel(out, n, seed); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%d bytes, seed %d) in %v\n", out, n, seed, time.Since(start).Round(time.Millisecond))
	return nil
}

// makeSD1 writes an SD 1.x checkpoint to out (a file), or with split its
// components into the directory out, and prints how to push them.
func makeSD1(out string, split bool, o sd1.Options, stdout, stderr io.Writer) error {
	files := sd1.Layout(split)
	paths := []string{out}
	if split {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		paths = paths[:0]
		for _, fl := range files {
			paths = append(paths, filepath.Join(out, fl.Name+o.DType.Ext()))
		}
	} else if st, err := os.Stat(out); err == nil && st.IsDir() {
		return fmt.Errorf("--out %s is a directory; give a file name, or --split to write the components into it", out)
	}
	push := []string{"genfleet models push --name sd1 --engine sdcpp"}
	for i, fl := range files {
		total, err := fl.Size(o)
		if err != nil {
			return err
		}
		start := time.Now()
		prog := cli.NewProgress(stderr, "make "+filepath.Base(paths[i]))
		err = fl.WriteFile(paths[i], o, func(done int64) { prog.Update(done, total) })
		if err == nil {
			prog.Update(total, total)
		}
		prog.Done()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (%s, %d bytes, %d tensors, %s, seed %d) in %v\n", paths[i], fl.Role, total,
			len(fl.Tensors), o.DType, o.Seed, time.Since(start).Round(time.Millisecond))
		push = append(push, "--file "+fl.Role+"="+paths[i])
	}
	if split {
		fmt.Fprintf(stdout, "push with: %s s3://BUCKET/PREFIX/\n", strings.Join(push, " "))
	} else {
		fmt.Fprintf(stdout, "push with: genfleet models push %s s3://BUCKET/KEY --name sd1 --engine sdcpp\n", out)
	}
	return nil
}

// writeModel writes a reference model to path through a temp file and a
// rename, so an interrupted make never leaves a truncated model behind.
func writeModel(path string, size int64, seed uint64) error {
	return writeAtomic(path, func(w io.Writer) error { return refgen.Make(w, size, seed) })
}

// writeAtomic writes path through write, into a temp file that is synced
// and renamed over path only once write succeeded.
func writeAtomic(path string, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 4<<20)
	if err := write(bw); err != nil {
		tmp.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
