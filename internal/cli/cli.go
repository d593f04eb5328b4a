// Package cli holds the command-line settings every flotilla process shares:
// how to reach NATS (URL, credentials, TLS), the fleet's subject prefix, the
// object store, and logging. Each setting has a flag and an environment
// variable; the flag wins. NATS settings also come from natscli contexts
// (see Common), so that a NATS user's existing setup just works.
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
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
)

// Common is the shared settings.
//
// NATS authentication is one of Creds (a credentials file: user JWT and
// seed, for servers in operator mode), NKey (a file holding a user nkey
// seed), User and Password, or Token; TLSCert and TLSKey add a client
// certificate (mutual TLS, which a server may also use to identify the
// user) and TLSCA the CA that verifies the server. InboxPrefix replaces
// "_INBOX" in the subjects on which the process receives replies, so that
// a server can let each user subscribe to its own replies only.
//
// Context names a natscli context, as `nats --context` does: a name under
// $XDG_CONFIG_HOME/nats/context (default ~/.config/nats/context), or the
// path of a context .json file. Empty means the context selected with
// `nats context select`, if any; NoContext ignores contexts. A context
// supplies every NATS setting (URL, credentials, nkey, TLS, inbox prefix,
// and the rest natscli reads); each setting given by a flag or an
// environment variable replaces the context's.
type Common struct {
	NATS        string
	Context     string
	NoContext   bool
	Creds       string
	NKey        string
	User        string
	Password    string
	Token       string
	TLSCert     string
	TLSKey      string
	TLSCA       string
	InboxPrefix string
	Prefix      string
	Store       string
	LogLevel    string
	LogJSON     bool
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
	fs.StringVar(&c.NATS, "nats", os.Getenv("NATS_URL"), "NATS server URL(s), comma separated (env NATS_URL; default: the context's, else "+nats.DefaultURL+")")
	fs.StringVar(&c.NATS, "server", c.NATS, "same as -nats")
	fs.StringVar(&c.NATS, "s", c.NATS, "same as -nats")
	fs.StringVar(&c.Context, "context", os.Getenv("NATS_CONTEXT"), "natscli context: a `name` from `nats context ls` or a context .json file (env NATS_CONTEXT; default: the selected one)")
	fs.BoolVar(&c.NoContext, "no-context", false, "ignore natscli contexts, even the selected one")
	fs.StringVar(&c.Creds, "creds", os.Getenv("NATS_CREDS"), "NATS credentials file (env NATS_CREDS)")
	fs.StringVar(&c.NKey, "nkey", os.Getenv("NATS_NKEY"), "NATS nkey seed file (env NATS_NKEY)")
	fs.StringVar(&c.User, "user", os.Getenv("NATS_USER"), "NATS user (env NATS_USER)")
	fs.StringVar(&c.Password, "password", os.Getenv("NATS_PASSWORD"), "NATS password (env NATS_PASSWORD)")
	fs.StringVar(&c.Token, "token", os.Getenv("NATS_TOKEN"), "NATS token (env NATS_TOKEN)")
	fs.StringVar(&c.TLSCert, "tlscert", os.Getenv("NATS_CERT"), "client TLS certificate (env NATS_CERT)")
	fs.StringVar(&c.TLSKey, "tlskey", os.Getenv("NATS_KEY"), "client TLS key (env NATS_KEY)")
	fs.StringVar(&c.TLSCA, "tlsca", os.Getenv("NATS_CA"), "CA to verify the NATS server (env NATS_CA)")
	fs.StringVar(&c.InboxPrefix, "inbox-prefix", os.Getenv("NATS_INBOX_PREFIX"), "subject prefix of reply inboxes instead of _INBOX (env NATS_INBOX_PREFIX)")
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

// Connect connects to NATS as name with the configured authentication and
// TLS, plus extra options (LogConnection, for one). A long-running process
// passes forever=true: it waits for the server if it is not up yet and
// reconnects forever, even when the server refuses its credentials (so
// that a corrected server configuration or a rotated credentials file is
// picked up without a restart); a command-line client fails fast. Connect
// refuses settings that are ambiguous or incomplete (two kinds of
// credentials, a password without a user, a certificate without its key)
// rather than pick one silently.
func (c *Common) Connect(name string, forever bool, extra ...nats.Option) (*nats.Conn, error) {
	nctx, err := c.natsContext()
	if err != nil {
		return nil, err
	}
	opts, err := nctx.options()
	if err != nil {
		return nil, fmt.Errorf("NATS settings%s: %w", nctx.note(), err)
	}
	opts = append([]nats.Option{nats.Name(name)}, opts...)
	if forever {
		opts = append(opts, nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), nats.IgnoreAuthErrorAbort())
	}
	url := strings.TrimSpace(nctx.serverURL())
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s%s: %w", url, nctx.note(), err)
	}
	return nc, nil
}

// natsContext returns the settings to connect with: the natscli context
// (Context, else the selected one, unless NoContext), with every setting
// given by a flag or the environment in place of the context's. Credentials
// are replaced whole: a flag or variable naming any kind of credentials
// drops every credential of the context, so that the two never mix; a
// password alone is the password of the context's user.
func (c *Common) natsContext() (*natsContext, error) {
	if err := c.checkCredentials(); err != nil {
		return nil, err
	}
	nctx := &natsContext{}
	if !c.NoContext {
		var err error
		if nctx, err = loadNATSContext(c.Context); err != nil {
			return nil, fmt.Errorf("natscli context: %w", err)
		}
	}
	for _, s := range []struct {
		to   *string
		from string
	}{
		{&nctx.URL, strings.TrimSpace(c.NATS)}, {&nctx.Cert, c.TLSCert}, {&nctx.Key, c.TLSKey}, {&nctx.CA, c.TLSCA}, {&nctx.InboxPrefix, c.InboxPrefix},
	} {
		if s.from != "" {
			*s.to = s.from
		}
	}
	switch {
	case c.Creds+c.NKey+c.User+c.Token != "":
		nctx.User, nctx.Password, nctx.Token, nctx.Creds, nctx.NKey = c.User, c.Password, c.Token, c.Creds, c.NKey
		nctx.UserJWT, nctx.UserSeed = "", ""
	case c.Password != "" && nctx.User == "":
		return nil, fmt.Errorf("-password (NATS_PASSWORD) is set without -user (NATS_USER)%s", nctx.note())
	case c.Password != "":
		nctx.Password = c.Password // of the context's user, kept out of its file
	}
	if (nctx.Cert == "") != (nctx.Key == "") {
		return nil, fmt.Errorf("a client certificate needs both -tlscert (NATS_CERT) and -tlskey (NATS_KEY)%s", nctx.note())
	}
	return nctx, nil
}

// checkCredentials refuses credentials from flags and the environment of
// more than one kind.
func (c *Common) checkCredentials() error {
	var kinds []string
	for _, k := range []struct{ flag, value string }{{"-creds", c.Creds}, {"-nkey", c.NKey}, {"-user", c.User}, {"-token", c.Token}} {
		if k.value != "" {
			kinds = append(kinds, k.flag)
		}
	}
	if len(kinds) > 1 {
		return fmt.Errorf("more than one kind of NATS credentials (%s, from flags or the environment): set one", strings.Join(kinds, ", "))
	}
	return nil
}

// LogConnection returns an option that logs what a NATS connection would
// otherwise keep to itself: asynchronous errors (a permissions violation
// on a publish or a subscription, a slow consumer), failed connection
// attempts (a refused password or certificate, a server that is down;
// each distinct error at once, a repeated one at most once a minute),
// disconnections, reconnections and the connection closing.
func LogConnection(log *slog.Logger) nats.Option {
	return func(o *nats.Options) error {
		o.AsyncErrorCB = func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Error("NATS", "err", err, "subscription", sub.Subject)
				return
			}
			log.Error("NATS", "err", err)
		}
		var mu sync.Mutex
		var last string
		var lastAt time.Time
		o.ReconnectErrCB = func(_ *nats.Conn, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err == nil || (err.Error() == last && time.Since(lastAt) < time.Minute) {
				return
			}
			last, lastAt = err.Error(), time.Now()
			log.Warn("cannot connect to NATS; retrying", "err", err)
		}
		o.DisconnectedErrCB = func(nc *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "err", err)
			}
		}
		o.ReconnectedCB = func(nc *nats.Conn) { log.Info("NATS reconnected", "server", nc.ConnectedUrlRedacted()) }
		o.ClosedCB = func(nc *nats.Conn) {
			if err := nc.LastError(); err != nil {
				log.Error("NATS connection closed", "err", err)
			}
		}
		return nil
	}
}
