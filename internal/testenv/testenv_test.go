package testenv

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestRedisAnswersPing(t *testing.T) {
	r := Redis(t)
	c, err := net.Dial("tcp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != "+PONG\r\n" {
		t.Fatalf("PING answered %q", buf)
	}
}

func TestS3PutGet(t *testing.T) {
	s := S3Server(t, "bucket-a")
	ctx := context.Background()
	_, err := s.Client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("bucket-a"), Key: aws.String("x/y"), Body: strings.NewReader("hello")})
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("bucket-a"), Key: aws.String("x/y"), Range: aws.String("bytes=1-3")})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(out.Body)
	out.Body.Close()
	if string(b) != "ell" {
		t.Fatalf("ranged GET = %q, want %q", b, "ell")
	}
}
