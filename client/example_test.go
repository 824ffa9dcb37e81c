package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/genfleet/genfleet/client"
	"github.com/genfleet/genfleet/job"
)

// Submit a job, follow it to its end, and save its image.
func Example() {
	ctx := context.Background()
	api := client.New("http://127.0.0.1:8080", os.Getenv("GENFLEET_API_TOKEN"))

	a, err := api.Submit(ctx, job.Request{Model: "demo", Prompt: "a red fox", Seed: 7,
		Width: 256, Height: 256, Steps: 4, Guidance: job.DefaultGuidance})
	var apiErr *client.Error
	if errors.As(err, &apiErr) {
		log.Fatalf("refused (%d, field %q): %s", apiErr.StatusCode, apiErr.Field, apiErr.Message)
	} else if err != nil {
		log.Fatal(err)
	}

	// Each event as it comes; Wait returns the same record without them
	// (and polls a scheduler that serves no events).
	rec, err := api.Follow(ctx, a.ID, func(ev client.Event) { fmt.Println(ev.Type, string(ev.Data)) })
	if err != nil {
		log.Fatal(err)
	}
	if rec.Status != job.StatusSucceeded {
		log.Fatalf("job %s %s: %s", rec.ID, rec.Status, rec.Error)
	}

	img, err := api.Image(ctx, a.ID, 0)
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	f, err := os.Create("fox.png")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := io.Copy(f, img); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
}
