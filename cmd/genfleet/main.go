// Command genfleet runs image-generation jobs on a fleet of workers. One
// binary, several roles:
//
//	genfleet dev         the whole fleet in one process tree, no services needed
//	genfleet scheduler   the HTTP API
//	genfleet worker      a worker process
//	genfleet submit      submit a job through the API
//	genfleet models      make, push, register, inspect and list models
//
// Every flag has a GENFLEET_* environment fallback; `genfleet CMD -h` lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/genfleet/genfleet/bench/benchcmd"
	"github.com/genfleet/genfleet/internal/cli"
	"github.com/genfleet/genfleet/internal/cli/cachecmd"
)

const usage = `genfleet — run image-generation jobs on a fleet of GPU and CPU workers.

Usage: genfleet COMMAND [flags]

Commands:
  dev         run the whole fleet locally: embedded Redis and S3, a demo model,
              the scheduler and two worker processes sharing one model cache
  scheduler   serve the HTTP API (jobs, models, health, metrics)
  worker      run a worker process
  submit      submit a job through the API, optionally wait and save the PNG
  models      make | push | register | inspect | ls reference and registered models
  cache       ls | pull | verify | gc | rm this host's model cache
  bench       measure genfleet against its anchors (genfleet bench -h)

Run 'genfleet COMMAND -h' for a command's flags; each flag also reads the
GENFLEET_* environment variable named in its help.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "dev":
		err = cmdDev(ctx, args[1:], stdout, stderr)
	case "scheduler":
		err = cmdScheduler(ctx, args[1:], stderr)
	case "worker":
		err = cmdWorker(ctx, args[1:], stderr)
	case "submit":
		err = cmdSubmit(ctx, args[1:], stdout, stderr)
	case "models":
		err = cmdModels(ctx, args[1:], stdout, stderr)
	case "bench":
		err = benchcmd.Run(ctx, args[1:], stdout, stderr)
	case "cache":
		err = cachecmd.Run(ctx, args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "genfleet: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, cli.ErrUsage), errors.Is(err, flag.ErrHelp):
		return 2
	default:
		fmt.Fprintf(stderr, "genfleet %s: %v\n", args[0], err)
		return 1
	}
}
