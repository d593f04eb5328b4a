package objectstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// DefaultS3Endpoint is the endpoint of an s3:// location that names none.
const DefaultS3Endpoint = "s3.amazonaws.com"

// S3PartSize is the part size of multipart uploads. Objects up to this size
// are uploaded with one PUT.
const S3PartSize = 16 << 20

// BucketLookup says how an S3 request names its bucket.
type BucketLookup int

const (
	// LookupAuto uses virtual-host style for AWS (and Google) endpoints
	// and path style for any other endpoint.
	LookupAuto BucketLookup = iota
	// LookupDNS is virtual-host style: https://bucket.endpoint/key.
	LookupDNS
	// LookupPath is path style: https://endpoint/bucket/key, which MinIO
	// and most self-hosted stores want.
	LookupPath
)

// S3Config says where an S3 store lives. Credentials are passed separately,
// in Options.
type S3Config struct {
	// Endpoint is host or host:port, without scheme; empty means
	// DefaultS3Endpoint.
	Endpoint string
	// Bucket is the bucket, created by NewS3 if missing.
	Bucket string
	// Prefix, if not empty, is a key (by ValidateKey) under which every
	// object of the store lives: key k is stored as Prefix + "/" + k.
	Prefix string
	// Region is the bucket's region; empty means look it up (one request,
	// cached) or, for a new bucket, us-east-1.
	Region string
	// Secure selects HTTPS.
	Secure bool
	// BucketLookup selects virtual-host or path style requests.
	BucketLookup BucketLookup
}

// S3 is a Store in an S3-compatible object store (AWS S3, MinIO, ...),
// through minio-go.
//
// Uploads carry a CRC32C checksum that the server verifies (per part for
// multipart uploads); objects larger than S3PartSize are uploaded in parts,
// and a Put holds at most S3PartSize bytes of its input in memory.
// PutIfAbsent is a conditional write (If-None-Match: *), atomic on the
// server. minio-go retries failed requests (a single PUT, each part, every
// read) with backoff; every method returns once ctx is done, at the latest.
//
// A multipart upload that fails is aborted; if the server is unreachable,
// its parts stay behind until the server expires incomplete uploads (MinIO
// does after a day; on AWS, configure an AbortIncompleteMultipartUpload
// lifecycle rule).
type S3 struct {
	client   *minio.Client
	bucket   string
	prefix   string // "" or ends in "/"
	location string
}

var _ Store = (*S3)(nil)

// NewS3 returns a store in cfg.Bucket, creating the bucket if it does not
// exist. See Options for where credentials come from.
func NewS3(ctx context.Context, cfg S3Config, opts Options) (*S3, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultS3Endpoint
	}
	prefix := ""
	if cfg.Prefix != "" {
		if err := ValidateKey(cfg.Prefix); err != nil {
			return nil, fmt.Errorf("objectstore: s3 prefix: %w", err)
		}
		prefix = cfg.Prefix + "/"
	}
	lookup := minio.BucketLookupAuto
	switch cfg.BucketLookup {
	case LookupDNS:
		lookup = minio.BucketLookupDNS
	case LookupPath:
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        s3Credentials(opts),
		Secure:       cfg.Secure,
		Region:       cfg.Region,
		BucketLookup: lookup,
		// Required for Checksum on PutObjectOptions: the CRC32C travels in
		// an HTTP trailer, computed while the body streams.
		TrailingHeaders: true,
	})
	if err != nil {
		return nil, fmt.Errorf("objectstore: s3 endpoint %q: %w", cfg.Endpoint, err)
	}
	s := &S3{client: client, bucket: cfg.Bucket, prefix: prefix, location: s3Location(cfg)}
	if err := s.ensureBucket(ctx, cfg.Region); err != nil {
		return nil, err
	}
	return s, nil
}

// s3Credentials is explicit static credentials if opts has any, else the
// usual chain: AWS environment, MinIO environment, AWS files, IAM.
func s3Credentials(opts Options) *credentials.Credentials {
	if opts.AccessKey != "" || opts.SecretKey != "" {
		return credentials.NewStaticV4(opts.AccessKey, opts.SecretKey, opts.SessionToken)
	}
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.EnvMinio{},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{},
	})
}

func s3Location(cfg S3Config) string {
	q := url.Values{}
	q.Set("endpoint", cfg.Endpoint)
	q.Set("secure", strconv.FormatBool(cfg.Secure))
	if cfg.Region != "" {
		q.Set("region", cfg.Region)
	}
	switch cfg.BucketLookup {
	case LookupPath:
		q.Set("path_style", "true")
	case LookupDNS:
		q.Set("path_style", "false")
	}
	return (&urlForm{scheme: "s3", host: cfg.Bucket, path: cfg.Prefix, query: q}).String()
}

func (s *S3) ensureBucket(ctx context.Context, region string) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("objectstore: s3 bucket %q: %w", s.bucket, err)
	}
	if ok {
		return nil
	}
	err = s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: region})
	if err != nil && s3Code(err) != "BucketAlreadyOwnedByYou" {
		return fmt.Errorf("objectstore: s3 creating bucket %q: %w", s.bucket, err)
	}
	return nil
}

// Location implements Store.
func (s *S3) Location() string { return s.location }

// Put implements Store.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.put(ctx, key, r, size, false)
}

// PutIfAbsent implements Store with a conditional write (If-None-Match: *),
// which the server checks atomically when the upload completes.
//
// Two caveats of conditional writes: a PutIfAbsent whose request minio-go
// retries after a lost response can report ErrExists for the object it wrote
// itself, and AWS answers 409 ConditionalRequestConflict (an error, not
// ErrExists) to a PutIfAbsent racing another write of the same key. A caller
// to whom either matters reads the object back and compares.
func (s *S3) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.put(ctx, key, r, size, true)
}

func (s *S3) put(ctx context.Context, key string, r io.Reader, size int64, ifAbsent bool) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("%w: %q: negative size %d", ErrSizeMismatch, key, size)
	}
	opts := minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    S3PartSize,
	}
	if ifAbsent {
		opts.SetMatchETagExcept("*")
	}
	er := &exactReader{r: r, left: size, key: key, size: size}
	var err error
	if size <= S3PartSize {
		// One PUT. Read the object first: the size is then checked before
		// anything is sent, and with a seekable body and a checksum header
		// computed up front minio-go can retry the request. (A checksum in
		// a trailer, as Checksum below sends it, is not reset when minio-go
		// retries, so the retried request would be refused.)
		data := make([]byte, size)
		if _, err := io.ReadFull(er, data); err != nil || er.finish() != nil {
			if rerr := er.error(); rerr != nil {
				return rerr
			}
			return fmt.Errorf("objectstore: s3 put %q: reading input: %w", key, err)
		}
		crc := crc32.Checksum(data, crc32c)
		opts.UserMetadata = map[string]string{
			"x-amz-checksum-crc32c": base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, crc)),
		}
		_, err = s.client.PutObject(ctx, s.bucket, s.prefix+key, bytes.NewReader(data), size, opts)
	} else {
		opts.Checksum = minio.ChecksumCRC32C
		err = s.putMultipart(ctx, key, er, size, opts)
	}
	if rerr := er.error(); rerr != nil {
		// r failed or had the wrong size: that, not how minio-go reported
		// the aborted upload, is the error.
		return rerr
	}
	if err != nil {
		if ifAbsent && (s3Status(err) == http.StatusPreconditionFailed || s3Code(err) == "PreconditionFailed") {
			return fmt.Errorf("%w: %q", ErrExists, key)
		}
		return s.error("put", key, err)
	}
	return nil
}

// putMultipart uploads er in parts. er hides any io.Seeker or io.ReaderAt of
// the caller's reader: minio-go then reads it once, in order, one part into a
// buffer at a time, so that er sees every byte and a failing reader fails the
// upload. Parts are retried from their buffers, each with its CRC32C.
//
// When an upload fails, minio-go aborts it with a context of its own (up to a
// minute, with retries), which would keep Put past ctx while the server is
// unreachable. So the upload runs in a goroutine that putMultipart leaves
// behind once ctx is done, after making sure it never reads from the
// caller's reader again.
func (s *S3) putMultipart(ctx context.Context, key string, er *exactReader, size int64, opts minio.PutObjectOptions) error {
	done := make(chan error, 1)
	go func() {
		_, err := s.client.PutObject(ctx, s.bucket, s.prefix+key, er, size, opts)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	er.abandon() // waits for a Read in progress
	select {
	case err := <-done:
		return err
	default:
		return fmt.Errorf("%w (the upload is aborted in the background)", context.Cause(ctx))
	}
}

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// exactReader yields exactly size bytes of r, and fails (instead of
// returning the last bytes) when r has more or fewer. It remembers its first
// error. Once abandoned, it never touches r again.
type exactReader struct {
	mu        sync.Mutex
	r         io.Reader
	left      int64
	key       string
	size      int64
	err       error
	delivered bool // all size bytes were returned and r is at EOF
	abandoned bool
}

// errAbandoned fails reads of an exactReader whose Put has returned.
var errAbandoned = errors.New("objectstore: s3 put: upload abandoned")

func (e *exactReader) Read(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.abandoned {
		return 0, errAbandoned
	}
	if e.err != nil {
		return 0, e.err
	}
	if e.left == 0 {
		if !e.delivered {
			if err := e.checkEOF(); err != nil {
				return 0, err
			}
		}
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	switch {
	case err == io.EOF && e.left > 0:
		e.err = fmt.Errorf("%w: %q: got %d bytes, want %d", ErrSizeMismatch, e.key, e.size-e.left, e.size)
		return 0, e.err
	case err != nil && err != io.EOF:
		e.err = fmt.Errorf("objectstore: s3 put %q: reading input: %w", e.key, err)
		return 0, e.err
	case e.left == 0 && err == nil:
		// The last bytes: hand them out only if nothing follows, so that the
		// upload never completes with a truncated copy of a longer input.
		if err := e.checkEOF(); err != nil {
			return 0, err
		}
	}
	if e.left == 0 {
		e.delivered = true
	}
	return n, nil
}

// finish makes sure that all size bytes were read and that r has nothing
// more. It is for callers that stop reading after size bytes (and so never
// see the final check in Read), as io.ReadFull does.
func (e *exactReader) finish() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.err != nil:
		return e.err
	case e.left > 0:
		e.err = fmt.Errorf("%w: %q: got %d bytes, want %d", ErrSizeMismatch, e.key, e.size-e.left, e.size)
		return e.err
	case !e.delivered:
		return e.checkEOF()
	}
	return nil
}

// error returns the first error reading r, or nil.
func (e *exactReader) error() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// abandon makes every later Read fail without touching r. It waits for a
// Read in progress.
func (e *exactReader) abandon() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.abandoned = true
}

// checkEOF makes sure r has nothing left, recording ErrSizeMismatch if it
// has and r's error if reading it fails. e.mu must be held.
func (e *exactReader) checkEOF() error {
	var b [1]byte
	for range 100 {
		n, err := e.r.Read(b[:])
		switch {
		case n > 0:
			e.err = fmt.Errorf("%w: %q: got more than %d bytes", ErrSizeMismatch, e.key, e.size)
			return e.err
		case err == io.EOF:
			e.delivered = true
			return nil
		case err != nil:
			e.err = fmt.Errorf("objectstore: s3 put %q: reading input: %w", e.key, err)
			return e.err
		}
	}
	e.err = fmt.Errorf("objectstore: s3 put %q: reading input: %w", e.key, io.ErrNoProgress)
	return e.err
}

// Get implements Store. It costs one request, which has completed (and
// reported ErrNotFound, say) when Get returns; the body streams as the
// caller reads.
func (s *S3) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	offset = max(offset, 0)
	if length == 0 {
		// HTTP cannot ask for zero bytes; Stat answers whether key exists.
		if _, err := s.Stat(ctx, key); err != nil {
			return nil, err
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	var opts minio.GetObjectOptions
	var err error
	switch {
	case length > 0 && offset+length > offset: // no overflow
		err = opts.SetRange(offset, offset+length-1)
	case offset > 0:
		err = opts.SetRange(offset, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("objectstore: s3 get %q: %w", key, err)
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.prefix+key, opts)
	if err != nil {
		return nil, s.error("get", key, err)
	}
	// GetObject is lazy: Stat sends the request and reads the response
	// headers. The body that follows is what the caller reads.
	if _, err := obj.Stat(); err != nil {
		_ = obj.Close()
		if s3Code(err) == "InvalidRange" {
			// The object exists (else NoSuchKey) but starts before offset:
			// the range is cut to nothing.
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, s.error("get", key, err)
	}
	return obj, nil
}

// Stat implements Store.
func (s *S3) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := ValidateKey(key); err != nil {
		return ObjectInfo{}, err
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, s.error("stat", key, err)
	}
	return ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Copy implements Store with a server-side copy (CopyObject).
func (s *S3) Copy(ctx context.Context, src, dst string) error {
	if err := ValidateKey(src); err != nil {
		return err
	}
	if err := ValidateKey(dst); err != nil {
		return err
	}
	if src == dst {
		// S3 refuses to copy an object onto itself unchanged.
		_, err := s.Stat(ctx, src)
		return err
	}
	_, err := s.client.CopyObject(ctx,
		minio.CopyDestOptions{Bucket: s.bucket, Object: s.prefix + dst},
		minio.CopySrcOptions{Bucket: s.bucket, Object: s.prefix + src})
	if err != nil {
		return s.error("copy", src, err)
	}
	return nil
}

// List implements Store.
func (s *S3) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	if !prefixCanMatch(prefix) {
		return nil, nil // S3 would reject some of these ("../") as bad requests
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops minio-go's listing goroutine if we return early
	var out []ObjectInfo
	for oi := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{
		Prefix:    s.prefix + prefix,
		Recursive: true,
	}) {
		if oi.Err != nil {
			return nil, fmt.Errorf("objectstore: s3 list %q: %w", prefix, oi.Err)
		}
		key, ok := strings.CutPrefix(oi.Key, s.prefix)
		if !ok || ValidateKey(key) != nil {
			continue // not written through a Store: "dir/" markers and the like
		}
		out = append(out, ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified})
	}
	// S3 lists in UTF-8 binary order already; make it the contract.
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete implements Store, in batches of up to 1000 keys per request.
func (s *S3) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := ValidateKey(k); err != nil {
			return err
		}
	}
	if len(keys) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	objects := make(chan minio.ObjectInfo)
	go func() {
		defer close(objects)
		for _, k := range keys {
			select {
			case objects <- minio.ObjectInfo{Key: s.prefix + k}:
			case <-ctx.Done():
				return
			}
		}
	}()
	var errs []error
	for rerr := range s.client.RemoveObjects(ctx, s.bucket, objects, minio.RemoveObjectsOptions{}) {
		if s3Code(rerr.Err) == "NoSuchKey" {
			continue
		}
		key := strings.TrimPrefix(rerr.ObjectName, s.prefix)
		errs = append(errs, fmt.Errorf("objectstore: s3 delete %q: %w", key, rerr.Err))
	}
	if err := ctx.Err(); err != nil && len(errs) == 0 {
		return fmt.Errorf("objectstore: s3 delete: %w", err)
	}
	return errors.Join(errs...)
}

// error wraps err, from an operation op on key, adding ErrNotFound if the
// object does not exist.
func (s *S3) error(op, key string, err error) error {
	if code := s3Code(err); code == "NoSuchKey" || (code != "NoSuchBucket" && s3Status(err) == http.StatusNotFound) {
		return fmt.Errorf("%w: %q: %w", ErrNotFound, key, err)
	}
	return fmt.Errorf("objectstore: s3 %s %q: %w", op, key, err)
}

// s3Code returns the S3 error code of err ("NoSuchKey", ...), or "".
func s3Code(err error) string {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.Code
	}
	return ""
}

// s3Status returns the HTTP status of an S3 error response, or 0.
func s3Status(err error) int {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.StatusCode
	}
	return 0
}
