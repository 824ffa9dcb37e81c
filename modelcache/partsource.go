package modelcache

import (
	"context"
	"io"
)

// PartSource is a Source that can also deliver the parts of a file by its
// content rather than by its S3 object: a fleet of peers in front of S3
// (package peer). The cache uses it for a file whose manifest carries part
// digests (File.Parts) when the Cache's Source implements it; every other
// file is fetched through the plain Source methods.
//
// The cache hashes each part as it lands and counts it only once it
// matches its part digest, so a PartSource may take bytes from anywhere;
// it hears the verdict through PartFetch.Done.
type PartSource interface {
	Source
	// OpenParts starts the download of one file version. The returned
	// PartFetch is used until the download ends, then closed. An error
	// fails the download (it is retried like any fetch error).
	OpenParts(ctx context.Context, f PartFile) (PartFetch, error)
}

// PartFile is the file version a PartFetch downloads.
type PartFile struct {
	// Bucket, Key and ETag name the S3 object (ETag as Head returned it),
	// for parts the source takes from S3.
	Bucket, Key, ETag string
	// Digest is the whole file's "sha256:<hex>".
	Digest string
	Size   int64
	// PartSize and Parts are the manifest's part digests: part i is bytes
	// [i·PartSize, min((i+1)·PartSize, Size)) and hashes to Parts[i].
	PartSize int64
	Parts    []string
}

// PartLen is the length of part i of f.
func (f PartFile) PartLen(i int) int64 {
	off := int64(i) * f.PartSize
	return min(f.PartSize, f.Size-off)
}

// PartFetch is one download's use of a PartSource. Its methods are called
// from several goroutines at once (one per part in flight).
type PartFetch interface {
	// Get streams bytes [from, PartLen(i)) of part i. A body that ends
	// early or fails is an error for this attempt; the cache retries the
	// part, asking for the bytes it still lacks. The stall watchdog of the
	// cache (Options.StallTimeout) covers Get too: a Get that waits (for a
	// peer to receive the part, say) must give up before it fires.
	Get(ctx context.Context, i int, from int64) (io.ReadCloser, error)
	// Done tells the verdict on part i once all its bytes are in place:
	// ok when they hashed to the part's digest. When not, the cache has
	// thrown the part's bytes away (whichever Get calls delivered them)
	// and will ask for the whole part again.
	Done(i int, ok bool)
	// Close ends the download, whether it succeeded or not.
	Close()
}
