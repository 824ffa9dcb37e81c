package modelcache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// A multi-part download saves its progress beside the data, in
// tmp/<key>.progress, so that a fetch killed at any point (crash, SIGKILL,
// power loss, cancelled context) resumes where it stopped, in this process or
// another. The file is an append-only log:
//
//	{"v":1,"url":"s3://…","etag":"\"…\"","size":N,"part_size":P[,"digest":"sha256:…"]}   header, one JSON line
//	<part index>                                                   one line per finished part
//
// A part's line is appended only after the part's bytes were written to
// tmp/<key>.part and fdatasync'ed, so every part the log names is durable
// whatever happens next. The log itself is not fsynced: losing its tail only
// costs downloading those parts again. A torn last line (no newline) is
// ignored for the same reason. The part file is preallocated to the object's
// full size, so its size is checked against the header too.
//
// Only the holder of <key>'s fetch lock reads or writes these files.

const progressVersion = 1

// maxProgressBytes bounds how much of a progress log is read: a header plus
// one short line for each of maxParts parts and then some.
const maxProgressBytes = 1 << 20

// partialMaxAge is how long cleanTmp keeps a resumable partial download that
// no one has touched: a model asked for once and never again should not hold
// disk forever.
const partialMaxAge = 7 * 24 * time.Hour

// progressHeader identifies the object version a partial download belongs to.
type progressHeader struct {
	V        int    `json:"v"`
	URL      string `json:"url"`
	ETag     string `json:"etag"`
	Size     int64  `json:"size"`
	PartSize int64  `json:"part_size"`
	// Digest is set ("sha256:<hex>") when the file has part digests: then
	// every part the log records hashed to its part digest before it was
	// recorded, and the parts are the manifest's.
	Digest string `json:"digest,omitempty"`
}

// parts is how many parts the header's object splits into.
func (h progressHeader) parts() int {
	return int((h.Size + h.PartSize - 1) / h.PartSize)
}

func (c *Cache) progressPath(key string) string {
	return filepath.Join(c.root, tmpDir, key+".progress")
}

// parseProgress parses a progress log. It returns the header and, for each
// part, whether the log records it as finished. ok is false when the log is
// unusable (bad header, or a line that names no part of this object): the
// caller then starts over.
func parseProgress(data []byte) (hdr progressHeader, done []bool, ok bool) {
	line, rest, found := bytes.Cut(data, []byte{'\n'})
	if !found {
		return progressHeader{}, nil, false
	}
	if err := json.Unmarshal(line, &hdr); err != nil ||
		hdr.V != progressVersion || hdr.ETag == "" || hdr.Size <= 0 ||
		hdr.PartSize <= 0 || hdr.parts() > maxParts {
		return progressHeader{}, nil, false
	}
	done = make([]bool, hdr.parts())
	for len(rest) > 0 {
		line, rest, found = bytes.Cut(rest, []byte{'\n'})
		if !found {
			break // torn last append
		}
		i, err := strconv.Atoi(string(line))
		if err != nil || i < 0 || i >= len(done) {
			return progressHeader{}, nil, false
		}
		done[i] = true
	}
	return hdr, done, true
}

// readProgress reads and parses tmp/<key>.progress and checks it against
// the part file's size. ok is false when there is no usable log.
func (c *Cache) readProgress(key string) (hdr progressHeader, done []bool, ok bool) {
	f, err := os.Open(c.progressPath(key))
	if err != nil {
		return progressHeader{}, nil, false
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxProgressBytes))
	if err != nil {
		return progressHeader{}, nil, false
	}
	hdr, done, ok = parseProgress(data)
	if !ok {
		return progressHeader{}, nil, false
	}
	st, err := os.Stat(c.tmpPath(key))
	if err != nil || st.Size() != hdr.Size {
		return progressHeader{}, nil, false
	}
	return hdr, done, true
}

// progressLog appends finished parts to a progress log.
type progressLog struct {
	f   *os.File
	buf []byte
}

// createProgress starts a new progress log for hdr, replacing any old one.
func (c *Cache) createProgress(key string, hdr progressHeader) (*progressLog, error) {
	line, err := json.Marshal(hdr)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(c.progressPath(key), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return nil, err
	}
	return &progressLog{f: f}, nil
}

// appendProgress reopens an existing progress log for appending.
func (c *Cache) appendProgress(key string) (*progressLog, error) {
	f, err := os.OpenFile(c.progressPath(key), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, err
	}
	return &progressLog{f: f}, nil
}

// record appends the given parts in one write. The caller must have made
// their bytes durable first.
func (l *progressLog) record(parts []int) error {
	l.buf = l.buf[:0]
	for _, i := range parts {
		l.buf = strconv.AppendInt(l.buf, int64(i), 10)
		l.buf = append(l.buf, '\n')
	}
	if _, err := l.f.Write(l.buf); err != nil {
		return fmt.Errorf("save fetch progress: %w", err)
	}
	return nil
}

func (l *progressLog) close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// resumable reports whether tmp/<key>.part and tmp/<key>.progress form a
// partial download worth keeping: the log parses, matches the part file's
// size, records at least one finished part, was touched within
// partialMaxAge, and the blob is not installed already. Whether the object
// in S3 is still the version the log names (ETag and size) can only be told
// with a Head; the fetch that resumes checks it and starts over if not.
// The caller holds key's fetch lock.
func (c *Cache) resumable(key string) bool {
	_, done, ok := c.readProgress(key)
	if !ok {
		return false
	}
	st, err := os.Stat(c.progressPath(key))
	if err != nil || time.Since(st.ModTime()) > partialMaxAge {
		return false
	}
	if h, isBlob := cutBlobKey(key); isBlob {
		if _, err := os.Stat(c.blobPath(h)); !errors.Is(err, os.ErrNotExist) {
			return false // installed already (or unreadable): the partial is useless
		}
	}
	for _, d := range done {
		if d {
			return true
		}
	}
	return false
}

// cutBlobKey returns the hex digest of a "sha256-<hex>" key.
func cutBlobKey(key string) (string, bool) {
	const p = "sha256-"
	if len(key) > len(p) && key[:len(p)] == p {
		return key[len(p):], true
	}
	return "", false
}

// discardPartial removes a partial download and its progress log.
func (c *Cache) discardPartial(key string) {
	os.Remove(c.tmpPath(key))
	os.Remove(c.progressPath(key))
}
