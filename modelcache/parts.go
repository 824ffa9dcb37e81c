package modelcache

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
)

// Part digests. A manifest file may carry, beside its whole-file digest, the
// sha256 of each PartSize-byte piece of the file (the last piece may be
// shorter): File.PartSize and File.Parts. With them a piece can be verified
// the moment it lands, whichever source it came from (S3, or a peer that
// holds the blob or is still downloading it), and a bad piece is refetched
// on its own. Manifests without them keep working: such files are fetched
// from S3 only, and checked as a whole.
const (
	// DefaultManifestPartSize is the part size PartSizeFor starts from.
	DefaultManifestPartSize = 16 << 20
	// MinManifestPartSize is the smallest part size a manifest may use.
	MinManifestPartSize = 64 << 10
	// maxManifestParts caps the part digests of one file: PartSizeFor
	// doubles the part size until the count fits, which keeps a manifest
	// of a 130 GB file around 300 KB.
	maxManifestParts = 4096
)

// PartSizeFor is the part size for a file of size bytes: 16 MiB, doubled
// until the file has at most 4096 parts.
func PartSizeFor(size int64) int64 {
	ps := int64(DefaultManifestPartSize)
	for size > 0 && (size+ps-1)/ps > maxManifestParts {
		ps *= 2
	}
	return ps
}

// PartCount is how many parts of partSize bytes a file of size bytes has.
func PartCount(size, partSize int64) int {
	if size <= 0 || partSize <= 0 {
		return 0
	}
	return int((size + partSize - 1) / partSize)
}

// HasParts reports whether the file carries part digests.
func (f *File) HasParts() bool { return f.PartSize > 0 && len(f.Parts) > 0 }

// validateParts checks a file's part digests: both fields or neither, a
// whole-file digest beside them, a part size of at least
// MinManifestPartSize, one well-formed digest per part.
func (f *File) validateParts() error {
	if f.PartSize == 0 && len(f.Parts) == 0 {
		return nil
	}
	if f.Digest == "" {
		return fmt.Errorf("manifest file %q has part digests but no digest of the whole file", f.Name)
	}
	if f.PartSize < MinManifestPartSize {
		return fmt.Errorf("manifest file %q: part_size %d is below the minimum of %d bytes", f.Name, f.PartSize, MinManifestPartSize)
	}
	if want := PartCount(f.Size, f.PartSize); len(f.Parts) != want {
		return fmt.Errorf("manifest file %q: %d part digests, but %d bytes in parts of %d make %d", f.Name, len(f.Parts), f.Size, f.PartSize, want)
	}
	if len(f.Parts) > maxParts {
		return fmt.Errorf("manifest file %q: %d parts; at most %d are allowed (use a larger part_size)", f.Name, len(f.Parts), maxParts)
	}
	for i, d := range f.Parts {
		if _, err := parseDigest(d); err != nil {
			return fmt.Errorf("manifest file %q: part %d: %w", f.Name, i, err)
		}
	}
	return nil
}

// PartHasher computes a file's whole-file digest and its part digests in
// one pass over bytes written to it in order. The zero value is not
// usable: make one with NewPartHasher.
type PartHasher struct {
	partSize int64
	whole    hash.Hash
	part     hash.Hash
	inPart   int64 // bytes of the current part written so far
	parts    []string
	size     int64
}

// NewPartHasher returns a PartHasher for parts of partSize bytes; a
// partSize of 0 or less hashes the whole file only.
func NewPartHasher(partSize int64) *PartHasher {
	h := &PartHasher{partSize: partSize, whole: sha256.New()}
	if partSize > 0 {
		h.part = sha256.New()
	}
	return h
}

// Write hashes p; it never fails.
func (h *PartHasher) Write(p []byte) (int, error) {
	n := len(p)
	h.whole.Write(p)
	h.size += int64(n)
	if h.part == nil {
		return n, nil
	}
	for len(p) > 0 {
		k := min(int64(len(p)), h.partSize-h.inPart)
		h.part.Write(p[:k])
		h.inPart += k
		p = p[k:]
		if h.inPart == h.partSize {
			h.endPart()
		}
	}
	return n, nil
}

func (h *PartHasher) endPart() {
	h.parts = append(h.parts, "sha256:"+hex.EncodeToString(h.part.Sum(nil)))
	h.part.Reset()
	h.inPart = 0
}

// Sum returns the "sha256:<hex>" digest of everything written, the digests
// of its parts (nil without a part size) and the part size. Call it once,
// after the last Write.
func (h *PartHasher) Sum() (digest string, partSize int64, parts []string) {
	if h.part != nil && h.inPart > 0 {
		h.endPart()
	}
	digest = "sha256:" + hex.EncodeToString(h.whole.Sum(nil))
	if h.part == nil || h.size == 0 {
		return digest, 0, nil
	}
	return digest, h.partSize, h.parts
}
