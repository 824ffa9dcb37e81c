package uploads

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/genfleet/genfleet/internal/s3x"
	"github.com/genfleet/genfleet/internal/testenv"
	"github.com/genfleet/genfleet/job"
)

// PNG returns a w×h PNG of one colour.
func pngOf(t testing.TB, w, h int, c color.Color) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func jpegOf(t testing.TB, w, h int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, image.NewGray(image.Rect(0, 0, w, h)), nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func newStore(t *testing.T) *Store {
	t.Helper()
	s := testenv.S3Server(t, "outs")
	return &Store{S3: s.Client, Root: s3x.URL{Bucket: "outs", Key: "uploads/"}, MaxBytes: 64 << 10}
}

func fieldOf(err error) string {
	var fe *job.FieldError
	if errors.As(err, &fe) {
		return fe.Field
	}
	return ""
}

// An image is stored under its digest and read back by its ref; the same
// bytes twice give the same ref and one object; a JPEG is taken too.
func TestPutAndLoad(t *testing.T) {
	st := newStore(t)
	data := pngOf(t, 64, 72, color.NRGBA{200, 10, 10, 255})
	info, _, err := st.Put(t.Context(), data)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(info.Ref, job.UploadRefPrefix) || info.Width != 64 || info.Height != 72 || info.Format != "png" || info.Bytes != len(data) {
		t.Fatalf("info %+v", info)
	}
	again, _, err := st.Put(t.Context(), data)
	if err != nil || again != info {
		t.Fatalf("second put: %+v, %v", again, err)
	}
	img, err := st.Load(t.Context(), "init_image", info.Ref)
	if err != nil || !bytes.Equal(img.Data, data) || img.Width() != 64 {
		t.Fatalf("load: %v", err)
	}
	jinfo, _, err := st.Put(t.Context(), jpegOf(t, 128, 64))
	if err != nil || jinfo.Format != "jpeg" {
		t.Fatalf("jpeg: %+v, %v", jinfo, err)
	}
	// An s3:// ref is read as it is.
	if _, err := st.S3.PutObject(t.Context(), &s3.PutObjectInput{Bucket: aws.String("outs"), Key: aws.String("mine/m.png"), Body: bytes.NewReader(data)}); err != nil {
		t.Fatal(err)
	}
	if img, err := st.Load(t.Context(), "mask", "s3://outs/mine/m.png"); err != nil || img.SHA256 != strings.TrimPrefix(info.Ref, job.UploadRefPrefix) {
		t.Fatalf("s3 ref: %v", err)
	}
}

// Every kind of bad image is refused with an error naming the field, and
// nothing is stored for a refused upload.
func TestBadImagesNameTheField(t *testing.T) {
	st := newStore(t)
	for name, data := range map[string][]byte{
		"text":        []byte("hello, not an image"),
		"gif":         []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
		"truncated":   pngOf(t, 64, 64, color.White)[:60],
		"too small":   pngOf(t, 32, 64, color.White),
		"not mult 8":  pngOf(t, 68, 64, color.White),
		"too large":   bytes.Repeat([]byte{0}, 65<<10),
		"huge header": hugePNGHeader(t),
	} {
		_, _, err := st.Put(t.Context(), data)
		if fieldOf(err) != "image" {
			t.Errorf("%s: Put = %v, want a FieldError on image", name, err)
		}
	}
	if keys := listKeys(t, st); len(keys) != 0 {
		t.Errorf("refused uploads stored %v", keys)
	}
	if _, _, err := st.Put(t.Context(), bytes.Repeat([]byte{0}, 65<<10)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too large: %v", err)
	}

	missing := job.UploadRef(strings.Repeat("ab", 32))
	for ref, field := range map[string]string{
		missing:               "init_image",
		"s3://outs/nope.png":  "init_image",
		"upload:sha256:xyz":   "init_image",
		"file:///etc/passwd":  "init_image",
		"s3://outs/../x.png":  "init_image",
		"s3://Bad_Bucket/key": "init_image",
	} {
		if _, err := st.Load(t.Context(), "init_image", ref); fieldOf(err) != field {
			t.Errorf("Load(%q) = %v, want a FieldError on %s", ref, err, field)
		}
	}
	// Bytes at an upload's key that do not hash to its ref are refused.
	good := pngOf(t, 64, 64, color.White)
	other := pngOf(t, 64, 64, color.Black)
	info, _, err := st.Put(t.Context(), good)
	if err != nil {
		t.Fatal(err)
	}
	key := "uploads/sha256-" + strings.TrimPrefix(info.Ref, job.UploadRefPrefix)
	if _, err := st.S3.PutObject(t.Context(), &s3.PutObjectInput{Bucket: aws.String("outs"), Key: aws.String(key), Body: bytes.NewReader(other)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Load(t.Context(), "mask", info.Ref); fieldOf(err) != "mask" || !strings.Contains(err.Error(), "hash") {
		t.Errorf("altered upload: %v", err)
	}
}

// LoadJob checks the sizes against the job and each other.
func TestLoadJobSizes(t *testing.T) {
	st := newStore(t)
	put := func(w, h int) string {
		info, _, err := st.Put(t.Context(), pngOf(t, w, h, color.Gray{uint8(w + h)}))
		if err != nil {
			t.Fatal(err)
		}
		return info.Ref
	}
	init, mask, small := put(128, 64), put(128, 64), put(64, 64)
	req := job.Request{Width: 128, Height: 64, InitImage: init, Mask: mask}
	i, m, err := st.LoadJob(t.Context(), &req)
	if err != nil || i == nil || m == nil {
		t.Fatalf("LoadJob: %v", err)
	}
	for name, tc := range map[string]struct {
		req   job.Request
		field string
	}{
		"job size":  {job.Request{Width: 64, Height: 64, InitImage: init}, "init_image"},
		"mask size": {job.Request{Width: 128, Height: 64, InitImage: init, Mask: small}, "mask"},
	} {
		if _, _, err := st.LoadJob(t.Context(), &tc.req); fieldOf(err) != tc.field {
			t.Errorf("%s: %v, want a FieldError on %s", name, err, tc.field)
		}
	}
	if i, m, err := st.LoadJob(t.Context(), &job.Request{Width: 64, Height: 64}); i != nil || m != nil || err != nil {
		t.Errorf("a job without images: %v %v %v", i, m, err)
	}
}

// hugePNGHeader is a PNG whose header claims 100000×100000 pixels.
func hugePNGHeader(t testing.TB) []byte {
	data := pngOf(t, 64, 64, color.White)
	// IHDR width and height are at bytes 16..23; the CRC no longer
	// matches, which the header check reports first or the size does.
	copy(data[16:], []byte{0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0})
	return data
}

func listKeys(t *testing.T, st *Store) []string {
	t.Helper()
	out, err := st.S3.ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{Bucket: aws.String("outs")})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, *o.Key)
	}
	return keys
}

// FuzzDecode: any bytes decode to an image of an allowed size or fail
// with a FieldError on the field; never a panic.
func FuzzDecode(f *testing.F) {
	f.Add(pngOf(f, 64, 64, color.White))
	f.Add(jpegOf(f, 64, 64))
	f.Add(hugePNGHeader(f))
	f.Add([]byte("\xff\xd8\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Decode("init_image", data)
		if err != nil {
			if fieldOf(err) != "init_image" {
				t.Fatalf("error %v is not a FieldError on init_image", err)
			}
			return
		}
		if w, h := img.Width(), img.Height(); w < job.MinSize || w > job.MaxSize || h < job.MinSize || h > job.MaxSize {
			t.Fatalf("accepted a %dx%d image", w, h)
		}
	})
}
