// Package cli holds the command-line settings every flotilla process shares:
// how to reach NATS (URL, credentials, TLS), the fleet's subject prefix, the
// object store, and logging. Each setting has a flag and an environment
// variable; the flag wins.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"flotilla/objectstore"
	"flotilla/subjects"
)

// Common is the shared settings.
type Common struct {
	NATS     string
	Creds    string
	NKey     string
	User     string
	Password string
	Token    string
	TLSCert  string
	TLSKey   string
	TLSCA    string
	Prefix   string
	Store    string
	LogLevel string
	LogJSON  bool
}

// Env returns the value of environment variable key, or def.
func Env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// Register adds the shared flags to fs, defaulting to the environment.
// store says whether the command uses the object store.
func (c *Common) Register(fs *flag.FlagSet, store bool) {
	fs.StringVar(&c.NATS, "nats", Env("NATS_URL", nats.DefaultURL), "NATS server URL(s), comma separated (env NATS_URL)")
	fs.StringVar(&c.Creds, "creds", os.Getenv("NATS_CREDS"), "NATS credentials file (env NATS_CREDS)")
	fs.StringVar(&c.NKey, "nkey", os.Getenv("NATS_NKEY"), "NATS nkey seed file (env NATS_NKEY)")
	fs.StringVar(&c.User, "user", os.Getenv("NATS_USER"), "NATS user (env NATS_USER)")
	fs.StringVar(&c.Password, "password", os.Getenv("NATS_PASSWORD"), "NATS password (env NATS_PASSWORD)")
	fs.StringVar(&c.Token, "token", os.Getenv("NATS_TOKEN"), "NATS token (env NATS_TOKEN)")
	fs.StringVar(&c.TLSCert, "tlscert", os.Getenv("NATS_CERT"), "client TLS certificate (env NATS_CERT)")
	fs.StringVar(&c.TLSKey, "tlskey", os.Getenv("NATS_KEY"), "client TLS key (env NATS_KEY)")
	fs.StringVar(&c.TLSCA, "tlsca", os.Getenv("NATS_CA"), "CA to verify the NATS server (env NATS_CA)")
	fs.StringVar(&c.Prefix, "prefix", Env("FLOTILLA_PREFIX", subjects.DefaultPrefix), "subject prefix of the fleet (env FLOTILLA_PREFIX)")
	if store {
		fs.StringVar(&c.Store, "store", os.Getenv("FLOTILLA_STORE"), "object store for checkpoints: file:///dir or s3://bucket/prefix?endpoint=host:9000 (env FLOTILLA_STORE)")
	}
	fs.StringVar(&c.LogLevel, "log-level", Env("FLOTILLA_LOG_LEVEL", "info"), "debug, info, warn or error (env FLOTILLA_LOG_LEVEL)")
	fs.BoolVar(&c.LogJSON, "log-json", os.Getenv("FLOTILLA_LOG_JSON") != "", "log as JSON (env FLOTILLA_LOG_JSON)")
}

// Namespace returns the fleet's subject namespace.
func (c *Common) Namespace() (subjects.Namespace, error) { return subjects.NewNamespace(c.Prefix) }

// Logger returns a structured logger writing to w.
func (c *Common) Logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// Bounds of OpenStore's retries: the first wait, the longest wait, and how
// long one attempt may take.
const (
	storeRetryInitial = 500 * time.Millisecond
	storeRetryMax     = 10 * time.Second
	storeAttemptLimit = 30 * time.Second
)

// OpenStore opens the configured object store. A store that does not answer
// yet (MinIO still starting next to a coordinator in Docker Compose) is not
// an error: OpenStore tries again with capped exponential backoff, logging
// each failure to log, until it succeeds or ctx is done, so start order
// never matters. A location that cannot work (objectstore.ErrInvalidLocation)
// fails at once.
func (c *Common) OpenStore(ctx context.Context, log *slog.Logger) (objectstore.Store, error) {
	if c.Store == "" {
		return nil, errors.New("no object store: set -store or FLOTILLA_STORE (e.g. file:///var/lib/flotilla)")
	}
	return openStoreRetrying(ctx, log, func(ctx context.Context) (objectstore.Store, error) {
		return objectstore.Open(ctx, c.Store, objectstore.Options{})
	})
}

// openStoreRetrying calls open until it succeeds, fails with
// objectstore.ErrInvalidLocation, or ctx is done. Each call gets at most
// storeAttemptLimit.
func openStoreRetrying(ctx context.Context, log *slog.Logger, open func(context.Context) (objectstore.Store, error)) (objectstore.Store, error) {
	wait := storeRetryInitial
	for {
		actx, cancel := context.WithTimeout(ctx, storeAttemptLimit)
		s, err := open(actx)
		cancel()
		switch {
		case err == nil:
			return s, nil
		case errors.Is(err, objectstore.ErrInvalidLocation):
			return nil, err
		case ctx.Err() != nil:
			return nil, fmt.Errorf("opening the object store: %w (last error: %v)", ctx.Err(), err)
		}
		if log != nil {
			log.Warn("waiting for the object store", "err", err, "retry", wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("opening the object store: %w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, storeRetryMax)
	}
}

// Connect connects to NATS as name. A long-running process passes
// forever=true: it waits for the server if it is not up yet and reconnects
// forever; a command-line client fails fast.
func (c *Common) Connect(name string, forever bool) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name)}
	if forever {
		opts = append(opts, nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true))
	}
	switch {
	case c.Creds != "":
		opts = append(opts, nats.UserCredentials(c.Creds))
	case c.NKey != "":
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, fmt.Errorf("-nkey: %w", err)
		}
		opts = append(opts, o)
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	}
	if c.TLSCert != "" || c.TLSKey != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	nc, err := nats.Connect(strings.TrimSpace(c.NATS), opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", c.NATS, err)
	}
	return nc, nil
}
