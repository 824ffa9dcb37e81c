// Package modelcache is the host-local, content-addressed model cache: it
// resolves model references to manifests, fetches missing files from S3 into
// immutable blobs, and hands out read-only shared mappings of them.
//
// # Layout of a cache root
//
//	<root>/blobs/sha256-<hex>   immutable, mode 0444, named by the sha256 of their content
//	<root>/tmp/<key>.part       a download in progress (owned by whoever holds <key>'s lock);
//	                            with part digests, the parts its .progress log records are
//	                            verified, and other hosts may read them (OpenPeerBlob)
//	<root>/locks/<key>.lock     flock(2) targets that serialise fetchers; never deleted
//	<root>/locks/scrub-sha256-<hex>.lock  held by the one process scrubbing that blob
//	<root>/refs/<hash>.json     what a raw s3:// ref resolved to ({url, etag, size, digest})
//	<root>/use/sha256-<hex>     empty; its mtime is the blob's last use (LRU survives restarts)
//	<root>/verified/sha256-<hex> when the blob was last hashed, and the stamp (boot id, inode,
//	                            size, mtime, ctime) it had then: see VerifyPerBoot
//	<root>/quarantine/sha256-<hex>.<ns>  blobs that failed re-verification, moved aside by
//	                            rename; they count against the budget, and GC deletes them
//
// <key> is "sha256-<hex>" when the digest is known (a registered model) and
// "ref-<sha256 of the URL>" when it is not (a raw s3:// ref, hashed on fetch).
//
// # The rules that make sharing safe
//
// A blob is only ever created by downloading into tmp/, verifying the sha256,
// fsyncing the file, chmod 0444, renaming it into blobs/ and fsyncing the
// directory. A blob is never truncated or written in place, because every
// process that maps it would get SIGBUS.
//
// Fetchers of one key serialise on an exclusive flock of locks/<key>.lock,
// taken with LOCK_NB in a loop so that a context can cancel the wait. The
// kernel drops the locks of a process that dies, so a crashed downloader
// never wedges the others.
//
// Every Blob holds a shared flock on its own read-only descriptor of the blob
// file (the lease) for as long as it is mapped. TryEvict takes the exclusive
// lock without blocking and unlinks only if it got it; unlinking never
// invalidates a mapping that still exists.
//
// Processes share blobs through the file system alone: two Caches opened on
// the same root, in one process or many, cooperate through the same locks.
package modelcache

import "errors"

var (
	// ErrNotFound is what a Source returns (wrapped) when the bucket or
	// object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrModelNotFound means a reference names no registered model or no
	// existing object. The message says where the registry looked.
	ErrModelNotFound = errors.New("model not found")
	// ErrInvalidRef means a model name or s3:// reference is malformed.
	// Retrying does not help.
	ErrInvalidRef = errors.New("invalid model reference")
	// ErrDigestMismatch means downloaded bytes do not hash to the digest the
	// manifest promised. Nothing was added to the cache.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrNoCache means a cache opened with OpenExisting (or read-only)
	// does not exist: no root directory, or no blobs/ in it.
	ErrNoCache = errors.New("no model cache")
	// ErrReadOnly means a change was asked of a Cache opened read-only.
	ErrReadOnly = errors.New("model cache is read-only")
	// ErrChanged means an S3 object changed under a reference: its ETag no
	// longer matches the one it was pinned to (If-Match failed), or its size
	// differs from the manifest's. Resolving the reference again may help.
	ErrChanged = errors.New("object changed in S3")
)

// kindError is an error with a message of its own that still matches a
// sentinel (and its cause, if any) with errors.Is, so that messages can read
// `model "sdxl" not found (...)` rather than repeating the sentinel's text.
type kindError struct {
	kind  error
	msg   string
	cause error
}

func (e *kindError) Error() string { return e.msg }

func (e *kindError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}
