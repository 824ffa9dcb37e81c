// Package bench holds genfleet's benchmarks, the code behind `genfleet
// bench NAME`. Each one is a function over an options struct that returns a
// result struct; each measures genfleet against an anchor in the same run
// (docs/benchmarks.md), except Chaos, which checks that no job is lost:
//
//	Fetch    S3 → verified blob, against the SDK's transfer manager and disk writes
//	Load     a warm model's acquire in mmap mode, against read() into private memory
//	Share    N processes on one model: summed PSS with mmap, against read mode
//	ShareEngine  N stable-diffusion.cpp servers on one model: summed PSS
//	             and warm start with the engine's --mmap, against without
//	Queue    no-op jobs through the API and a worker, against raw asynq
//	Routing  model loads with model-aware routing, against plain queueing
//	Batch    one job of n images, against n jobs of one image
//	Upload   weights from a file mapping to the GPU, against pinned memory
//	Chaos    jobs while worker processes are SIGKILLed: none lost, none corrupt
//	Spread   N hosts cold-start one model against throttled S3: with peers, against
//	         S3 only (S3 bytes) and one host alone (time); with faults
//	Sim      a trace-driven simulation (package fleetsim) of 1,000 hosts: peers and
//	         warmth-aware scaling against S3 only
//
// A result's JSON encoding is the object `genfleet bench NAME --json` prints
// (with the run's bench name, wall time and machine added), so its field
// names are what docs and scripts read. The cmd/genfleet package only turns
// flags into options and prints results; an option set by a flag is named
// after it, and an error about the option names the flag ("--runs must be
// at least 1").
//
// Progress goes, line by line, to the io.Writer each benchmark takes (nil
// discards it). A benchmark that needs Redis or S3 uses the one its options
// name, or starts its own for the run: redis-server and versitygw from PATH
// on free loopback ports, stopped and removed when it returns. Routing,
// Chaos and ShareEngine run worker processes, an executable (genfleet
// itself by default) started as `genfleet worker`; Share runs holder
// processes the same way (see ShareChild), and Spread its hosts (see
// SpreadChild). Queue and Batch run their
// scheduler and worker in this process.
package bench
