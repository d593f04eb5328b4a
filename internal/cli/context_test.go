package cli

import (
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-io/flotilla/internal/testutil"
)

// natsConfig makes an empty natscli configuration directory, as
// $XDG_CONFIG_HOME/nats, with no NATS variable set, and returns a function
// that writes a context file there.
func natsConfig(t *testing.T) (dir string, write func(name string, ctx map[string]any) string) {
	t.Helper()
	home := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", home)
	for _, v := range []string{"NATS_URL", "NATS_CONTEXT", "NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD",
		"NATS_TOKEN", "NATS_CERT", "NATS_KEY", "NATS_CA", "NATS_INBOX_PREFIX"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	dir = filepath.Join(home, "nats")
	if err := os.MkdirAll(filepath.Join(dir, "context"), 0o700); err != nil {
		t.Fatal(err)
	}
	return dir, func(name string, ctx map[string]any) string {
		b, err := json.Marshal(ctx)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "context", name+".json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
}

// parseCommon parses args as a command's flags would be.
func parseCommon(t *testing.T, args ...string) *Common {
	t.Helper()
	var c Common
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.Register(fs, false)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	return &c
}

// A natscli context supplies the URL, the credentials and the inbox prefix,
// whichever way it is chosen: --context NAME, NATS_CONTEXT, the context
// `nats context select` chose, or the path of its file.
func TestContextSuppliesConnectionSettings(t *testing.T) {
	opts := testutil.NATSOptions(t.TempDir())
	opts.Username, opts.Password = "ann", "s3cret"
	srv := testutil.RunNATSWithOptions(t, opts)
	dir, write := natsConfig(t)
	path := write("prod", map[string]any{"description": "the fleet", "url": srv.ClientURL(),
		"user": "ann", "password": "s3cret", "inbox_prefix": "_INBOX.ann"})
	write("other", map[string]any{"url": "nats://127.0.0.1:1"})

	connect := func(name string, c *Common) {
		t.Helper()
		nc, err := c.Connect("test", false)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer nc.Close()
		if got := nc.ConnectedUrl(); got != srv.ClientURL() {
			t.Errorf("%s: connected to %s, want %s", name, got, srv.ClientURL())
		}
		if inbox := nc.NewInbox(); !strings.HasPrefix(inbox, "_INBOX.ann.") {
			t.Errorf("%s: inbox %s, want the context's prefix _INBOX.ann", name, inbox)
		}
	}
	connect("--context prod", parseCommon(t, "--context", "prod"))
	connect("--context=FILE", parseCommon(t, "--context="+path))
	t.Setenv("NATS_CONTEXT", "prod")
	connect("NATS_CONTEXT", parseCommon(t))
	os.Unsetenv("NATS_CONTEXT")
	if err := os.WriteFile(filepath.Join(dir, "context.txt"), []byte("prod\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	connect("selected context", parseCommon(t))
	// --context beats the selected context, and --no-context ignores both.
	if _, err := parseCommon(t, "--context", "other").Connect("test", false); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("--context other: %v, want a refused connection to the other context's URL", err)
	}
	if _, err := parseCommon(t, "--no-context", "-s", srv.ClientURL()).Connect("test", false); err == nil ||
		!strings.Contains(err.Error(), "Authorization Violation") {
		t.Errorf("--no-context: %v, want the server refusing a client without the context's password", err)
	}
}

// Flags and variables replace the context's settings: -s, --server and
// --nats the URL, any credentials the context's credentials as a whole.
func TestFlagsOverrideTheContext(t *testing.T) {
	open := testutil.RunNATS(t)
	opts := testutil.NATSOptions(t.TempDir())
	opts.Username, opts.Password = "ann", "s3cret"
	locked := testutil.RunNATSWithOptions(t, opts)
	_, write := natsConfig(t)
	write("prod", map[string]any{"url": locked.ClientURL(), "nkey": "~/no-such-seed.nk"})

	for _, flagName := range []string{"-s", "--server", "--nats"} {
		nc, err := parseCommon(t, "--context", "prod", flagName, open.ClientURL(), "--user", "x").Connect("test", false)
		if err != nil {
			t.Fatalf("%s: %v", flagName, err)
		}
		if got := nc.ConnectedUrl(); got != open.ClientURL() {
			t.Errorf("%s: connected to %s, want %s", flagName, got, open.ClientURL())
		}
		nc.Close()
	}
	// The context's nkey file does not exist: reading it fails, with ~
	// expanded as natscli does, unless credentials are given otherwise.
	_, err := parseCommon(t, "--context", "prod").Connect("test", false)
	if home, _ := os.UserHomeDir(); err == nil || !strings.Contains(err.Error(), filepath.Join(home, "no-such-seed.nk")) {
		t.Errorf("context nkey: %v, want the expanded path of its seed file", err)
	}
	t.Setenv("NATS_USER", "ann")
	t.Setenv("NATS_PASSWORD", "s3cret")
	nc, err := parseCommon(t, "--context", "prod").Connect("test", false)
	if err != nil {
		t.Fatalf("NATS_USER over the context's nkey: %v", err)
	}
	nc.Close()
}

func TestContextErrors(t *testing.T) {
	_, write := natsConfig(t)
	write("prod", map[string]any{"url": "nats://127.0.0.1:1", "ca": "~/no-such-ca.pem"})
	write("half", map[string]any{"url": "nats://127.0.0.1:1", "cert": "/c.pem"})
	write("nsc", map[string]any{"nsc": "nsc://op/acc/user"})
	write("op", map[string]any{"creds": "op://vault/nats/creds"})
	write("socks", map[string]any{"socks_proxy": "127.0.0.1:1080"})
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--context", "nope"}, `natscli context: unknown context "nope" (known contexts: half, nsc, op, prod, socks)`},
		{[]string{"--context", "nsc"}, `flotilla does not support nsc "nsc://op/acc/user": put the path of the credentials file in creds`},
		{[]string{"--context", "op"}, `flotilla does not support creds "op://vault/nats/creds"`},
		{[]string{"--context", "socks"}, `flotilla does not support socks_proxy "127.0.0.1:1080"`},
		{[]string{"--context", "../etc"}, "invalid context name ../etc"},
		{[]string{"--context", "prod"}, "no-such-ca.pem"},
		{[]string{"--context", "half"}, "a client certificate needs both -tlscert (NATS_CERT) and -tlskey (NATS_KEY) (natscli context "},
	} {
		nc, err := parseCommon(t, c.args...).Connect("test", false)
		if err == nil {
			nc.Close()
			t.Errorf("%q: connected", c.args)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.args, err, c.want)
		}
	}
	if _, err := (&Common{NoContext: true}).natsContext(); err != nil {
		t.Fatal(err)
	}
	if nctx, _ := (&Common{NoContext: true}).natsContext(); nctx.serverURL() != nats.DefaultURL {
		t.Errorf("no context, no flag: %s, want %s", nctx.serverURL(), nats.DefaultURL)
	}
}

// A password given alone is the password of the context's user, so that
// the context file need not hold it.
func TestPasswordOfTheContextsUser(t *testing.T) {
	opts := testutil.NATSOptions(t.TempDir())
	opts.Username, opts.Password = "ann", "s3cret"
	srv := testutil.RunNATSWithOptions(t, opts)
	_, write := natsConfig(t)
	write("prod", map[string]any{"url": srv.ClientURL(), "user": "ann"})
	write("anon", map[string]any{"url": srv.ClientURL()})
	if _, err := parseCommon(t, "--context", "prod").Connect("test", false); err == nil || !strings.Contains(err.Error(), "Authorization Violation") {
		t.Fatalf("no password: %v", err)
	}
	t.Setenv("NATS_PASSWORD", "s3cret")
	nc, err := parseCommon(t, "--context", "prod").Connect("test", false)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if _, err := parseCommon(t, "--context", "anon").Connect("test", false); err == nil || !strings.Contains(err.Error(), "is set without -user") {
		t.Errorf("a password and no user: %v", err)
	}
}

// A token in a context, and a credentials file named with $VAR, are used
// as natscli uses them.
func TestContextTokenAndVariables(t *testing.T) {
	opts := testutil.NATSOptions(t.TempDir())
	opts.Authorization = "t0ken"
	srv := testutil.RunNATSWithOptions(t, opts)
	_, write := natsConfig(t)
	write("tok", map[string]any{"url": srv.ClientURL(), "token": "t0ken"})
	nc, err := parseCommon(t, "--context", "tok").Connect("test", false)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	t.Setenv("CREDS_DIR", "/no/such/dir")
	write("creds", map[string]any{"url": srv.ClientURL(), "creds": "$CREDS_DIR/user.creds"})
	if _, err := parseCommon(t, "--context", "creds").Connect("test", false); err == nil || !strings.Contains(err.Error(), "/no/such/dir/user.creds") {
		t.Errorf("creds under $CREDS_DIR: %v", err)
	}
}
