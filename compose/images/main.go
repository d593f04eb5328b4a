// Command images builds the images compose/docker-compose.yml runs, from
// source on this machine, for a Docker engine that cannot pull:
//
//	go run ./compose/images [-flotilla TAG] [-nats TAG] [-minio TAG] [-minio-bin PATH]
//
// Each image is FROM scratch around one static binary built here
// (CGO_ENABLED=0, for the engine's OS and architecture):
//
//   - flotilla: cmd/flotilla, laid out as ../../Dockerfile lays it out (same
//     paths, user, data directory and entrypoint), so it is the same image
//     without the golang and distroless base images;
//   - nats: nats-server at the version go.mod requires;
//   - minio: the minio binary `make tools` installs (-minio-bin, else
//     MINIO_BIN, minio on PATH, or ~/.cache/flotilla/bin/minio).
//
// The NATS and MinIO images take the arguments the official images take, so
// the compose file runs either. An empty tag skips that image. On success it
// prints the tags as the compose file's variables, one per line:
//
//	FLOTILLA_IMAGE=flotilla:local
//	NATS_IMAGE=flotilla-local/nats:local
//	MINIO_IMAGE=flotilla-local/minio:local
//
// The end-to-end test in tests/compose builds its images with this command.
package main

import (
	"bytes"
	"context"
	"debug/elf"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
)

//go:embed *.Dockerfile
var dockerfiles embed.FS

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

// image is one image to build: its tag, the env variable the compose file
// reads it from, and how to fill its build context.
type image struct {
	name string // also the Dockerfile's name: <name>.Dockerfile
	env  string
	tag  string
	fill func(ctx context.Context, dir string) error
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.SetOutput(stderr)
	flotillaTag := fs.String("flotilla", "flotilla:local", "tag of the flotilla image (empty: skip)")
	natsTag := fs.String("nats", "flotilla-local/nats:local", "tag of the NATS server image (empty: skip)")
	minioTag := fs.String("minio", "flotilla-local/minio:local", "tag of the MinIO server image (empty: skip)")
	minioBin := fs.String("minio-bin", "", "static linux minio binary (default: MINIO_BIN, PATH, ~/.cache/flotilla/bin/minio)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	b, err := newBuilder(ctx, stderr)
	if err != nil {
		return err
	}
	images := []image{
		{name: "flotilla", env: "FLOTILLA_IMAGE", tag: *flotillaTag, fill: b.flotilla},
		{name: "nats", env: "NATS_IMAGE", tag: *natsTag, fill: b.nats},
		{name: "minio", env: "MINIO_IMAGE", tag: *minioTag, fill: func(ctx context.Context, dir string) error {
			return b.minio(dir, *minioBin)
		}},
	}
	tmp, err := os.MkdirTemp("", "flotilla-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var built []string
	for _, im := range images {
		if im.tag == "" {
			continue
		}
		dir := filepath.Join(tmp, im.name)
		if err := os.MkdirAll(filepath.Join(dir, "rootfs", "tmp"), 0o755); err != nil {
			return err
		}
		// Programs write temporary files; scratch has no /tmp.
		if err := os.Chmod(filepath.Join(dir, "rootfs", "tmp"), 0o1777); err != nil {
			return err
		}
		if err := im.fill(ctx, dir); err != nil {
			return fmt.Errorf("%s image: %w", im.name, err)
		}
		df, err := dockerfiles.ReadFile(im.name + ".Dockerfile")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), df, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "images: building %s\n", im.tag)
		if err := b.cmd(ctx, "", nil, "docker", "build", "--quiet", "--tag", im.tag, dir); err != nil {
			return fmt.Errorf("%s image: %w", im.name, err)
		}
		built = append(built, im.env+"="+im.tag)
	}
	for _, line := range built {
		fmt.Fprintln(stdout, line)
	}
	return nil
}

// builder builds static binaries for the engine's platform.
type builder struct {
	stderr     io.Writer
	moduleRoot string
	goos       string // the engine's, which binaries are built for
	goarch     string
}

func newBuilder(ctx context.Context, stderr io.Writer) (*builder, error) {
	b := &builder{stderr: stderr}
	out, err := b.output(ctx, "docker", "version", "--format", "{{.Server.Os}}/{{.Server.Arch}}")
	if err != nil {
		return nil, fmt.Errorf("asking the Docker engine for its platform: %w", err)
	}
	platform := strings.TrimSpace(out)
	var ok bool
	if b.goos, b.goarch, ok = strings.Cut(platform, "/"); !ok || b.goos != "linux" {
		return nil, fmt.Errorf("the Docker engine runs %q; these images are linux only", platform)
	}
	gomod, err := b.output(ctx, "go", "env", "GOMOD")
	if err != nil {
		return nil, err
	}
	gomod = strings.TrimSpace(gomod)
	if gomod == "" || gomod == os.DevNull {
		return nil, errors.New("run inside the flotilla module (go env GOMOD is empty)")
	}
	b.moduleRoot = filepath.Dir(gomod)
	return b, nil
}

// flotilla fills the flotilla image's context: the binary, the CA
// certificates (for https object stores) and the data directory.
func (b *builder) flotilla(ctx context.Context, dir string) error {
	if err := b.goBuild(ctx, filepath.Join(dir, "rootfs", "usr", "local", "bin", "flotilla"), "github.com/flotilla-io/flotilla/cmd/flotilla"); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return err
	}
	for _, ca := range []string{"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"} {
		if _, err := os.Stat(ca); err == nil {
			return copyFile(ca, filepath.Join(dir, "rootfs", "etc", "ssl", "certs", "ca-certificates.crt"), 0o644)
		}
	}
	fmt.Fprintln(b.stderr, "images: no CA certificates found on this machine; the flotilla image will reach only plain-HTTP object stores")
	return nil
}

// nats fills the NATS image's context with nats-server, built from the
// module go.mod requires (its main package is at the module root).
func (b *builder) nats(ctx context.Context, dir string) error {
	return b.goBuild(ctx, filepath.Join(dir, "rootfs", "usr", "local", "bin", "nats-server"), "github.com/nats-io/nats-server/v2")
}

// minio fills the MinIO image's context with a copy of the minio binary,
// which must be static and built for the engine's architecture.
func (b *builder) minio(dir, bin string) error {
	if bin == "" {
		var err error
		if bin, err = findMinIO(); err != nil {
			return err
		}
	}
	if err := b.checkStatic(bin); err != nil {
		return fmt.Errorf("%w (install one with `make tools`, or pass -minio-bin)", err)
	}
	return copyFile(bin, filepath.Join(dir, "rootfs", "usr", "bin", "minio"), 0o755)
}

// findMinIO looks where `make tools` and the tests look.
func findMinIO() (string, error) {
	if bin := os.Getenv("MINIO_BIN"); bin != "" {
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".cache", "flotilla", "bin", "minio")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no minio binary: run `make tools`, set MINIO_BIN or pass -minio-bin")
}

// goBuild builds pkg as a static binary for the engine's platform.
func (b *builder) goBuild(ctx context.Context, out, pkg string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	fmt.Fprintf(b.stderr, "images: go build %s (%s/%s)\n", pkg, b.goos, b.goarch)
	env := []string{"CGO_ENABLED=0", "GOOS=" + b.goos, "GOARCH=" + b.goarch}
	if err := b.cmd(ctx, b.moduleRoot, env, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg); err != nil {
		return err
	}
	return b.checkStatic(out)
}

// goarchOf maps the ELF machines the engine may run to GOARCH names.
var goarchOf = map[elf.Machine]string{
	elf.EM_X86_64:  "amd64",
	elf.EM_AARCH64: "arm64",
	elf.EM_386:     "386",
	elf.EM_ARM:     "arm",
	elf.EM_PPC64:   "ppc64le",
	elf.EM_S390:    "s390x",
	elf.EM_RISCV:   "riscv64",
}

// checkStatic fails unless bin is a statically linked Linux executable for
// the engine's architecture: a FROM scratch image has no dynamic loader and
// no libc.
func (b *builder) checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("%s: not a Linux executable: %w", bin, err)
	}
	defer f.Close()
	if arch := goarchOf[f.Machine]; arch != b.goarch {
		return fmt.Errorf("%s: built for %s, the Docker engine runs %s", bin, f.Machine, b.goarch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: dynamically linked; a scratch image needs a static binary (CGO_ENABLED=0)", bin)
		}
	}
	return nil
}

// cmd runs name with args in dir (empty: the current directory) with env
// added, and returns an error carrying its output if it fails.
func (b *builder) cmd(ctx context.Context, dir string, env []string, name string, args ...string) error {
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = dir
	c.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return nil
}

// output runs name with args and returns its standard output.
func (b *builder) output(ctx context.Context, name string, args ...string) (string, error) {
	c := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
