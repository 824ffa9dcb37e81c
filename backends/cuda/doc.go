// Package cuda is the "cuda" backend: it runs genfleet's reference model
// family (package refgen) on an NVIDIA GPU through the CUDA driver API.
// Importing it registers the backend.
//
// # No cgo
//
// The driver library, libcuda.so.1 (installed with the NVIDIA driver, not
// the CUDA toolkit), is opened at run time with dlopen through purego, so
// genfleet builds with CGO_ENABLED=0 and one binary runs on machines with
// and without a GPU. Where the library or a device is missing, New and
// Available return an error wrapping backends.ErrUnavailable that says
// why (the dlerror text, or the driver's error), and `genfleet worker
// --backend auto` falls back to the cpu backend.
//
// # Device threads
//
// A CUDA context is current per OS thread, while the Go scheduler moves
// goroutines between threads. So driver calls run only on goroutines
// locked to their OS thread with runtime.LockOSThread that have made the
// device's primary context current. The device thread runs closures sent
// to it over a channel, one at a time: allocation, kernels, and the naive
// and registered copies, so concurrent Generate calls serialise those.
// The Staged strategy's workers are further such threads (see stager),
// started when the backend opens and kept.
//
// # Uploads
//
// Weights are copied from the worker's read-only MAP_SHARED mapping with
// one of three strategies (see Strategy): Naive (cuMemcpyHtoD from the
// mapping), Staged (staging workers, each copying chunks of the mapping
// into its own pinned buffers and draining them with cuMemcpyHtoDAsync on
// its own stream; on a cold model their copies are what read the pages
// from disk, so disk reads overlap the device copies) and Registered
// (cuMemHostRegister read-only, then one copy). Auto picks per upload by
// estimated time, starting from figures measured on an H200 and replacing
// them with this machine's measurements as uploads are timed. Chunk
// planning is pure Go (planChunks).
//
// # Residency
//
// Uploaded weights stay on the device across jobs, keyed by model digest,
// under a device-memory budget with least-recently-used eviction and a
// keep-alive for unused models (see Config). The set is pure Go
// (residents); the Backend frees what it evicts.
//
// # Generation
//
// Each step's sweep runs as a kernel (kernels.cu, compiled to the
// committed kernels.ptx by gen.sh and embedded) that computes every
// chunk's lane sums in refgen's own summation order; the host adds the
// chunk sums in chunk order and runs the rest of the step and the
// rendering with refgen's code, so a request's image is byte-identical to
// the cpu backend's.
package cuda
