package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/genfleet/genfleet/client"
	"github.com/genfleet/genfleet/job"
)

// loraFlags collects repeated --lora NAME[:WEIGHT] flags.
type loraFlags []job.LoRA

func (l *loraFlags) String() string {
	var parts []string
	for _, x := range *l {
		parts = append(parts, x.Model+":"+strconv.FormatFloat(x.Weight, 'g', -1, 64))
	}
	return strings.Join(parts, ",")
}

func (l *loraFlags) Set(v string) error {
	name, w, hasWeight := strings.Cut(v, ":")
	if strings.HasPrefix(v, "s3://") {
		// s3://bucket/key[:WEIGHT]: the weight is after the last colon.
		i := strings.LastIndex(v, ":")
		name, w, hasWeight = v, "", false
		if i > len("s3:") {
			if _, err := strconv.ParseFloat(v[i+1:], 64); err == nil {
				name, w, hasWeight = v[:i], v[i+1:], true
			}
		}
	}
	lora := job.LoRA{Model: name, Weight: job.DefaultLoRAWeight}
	if hasWeight {
		f, err := strconv.ParseFloat(w, 64)
		if err != nil {
			return fmt.Errorf("%q: want NAME or NAME:WEIGHT, e.g. style:0.8", v)
		}
		lora.Weight = f
	}
	if name == "" {
		return fmt.Errorf("%q: want NAME or NAME:WEIGHT, e.g. style:0.8", v)
	}
	*l = append(*l, lora)
	return nil
}

// optionFlags collects repeated --option NAME=VALUE flags; a value that
// reads as a number or a boolean is one.
type optionFlags map[string]any

func (o *optionFlags) String() string { return fmt.Sprint(map[string]any(*o)) }

func (o *optionFlags) Set(v string) error {
	name, val, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("%q: want NAME=VALUE, e.g. clip_skip=2", v)
	}
	if *o == nil {
		*o = optionFlags{}
	}
	if f, err := strconv.ParseFloat(val, 64); err == nil {
		(*o)[name] = f
	} else if b, err := strconv.ParseBool(val); err == nil {
		(*o)[name] = b
	} else {
		(*o)[name] = val
	}
	return nil
}

// imageRef returns the job's ref for --flag value: a ref as it is, or the
// ref of FILE once uploaded, with the image's width and height.
func imageRef(ctx context.Context, api *client.Client, flag, value string) (string, [2]int, error) {
	if strings.HasPrefix(value, "s3://") || strings.HasPrefix(value, job.UploadRefPrefix) {
		return value, [2]int{}, nil
	}
	data, err := os.ReadFile(value)
	if err != nil {
		return "", [2]int{}, fmt.Errorf("--%s: %w", flag, err)
	}
	info, err := api.Upload(ctx, data)
	if err != nil {
		return "", [2]int{}, fmt.Errorf("--%s %s: %w", flag, value, err)
	}
	return info.Ref, [2]int{info.Width, info.Height}, nil
}
