package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nats-io/nats.go"
)

// natsContext is a natscli context: a JSON file of connection settings
// that the nats CLI writes (`nats context add`) under
// $XDG_CONFIG_HOME/nats/context/<name>.json (default ~/.config/nats), the
// one `nats context select` chose being named in ../context.txt.
//
// This reads the files as natscli's context package
// (github.com/nats-io/jsm.go/natscontext) does: the same locations, names,
// fields, and expansion of ~ and $VAR in file paths. It is not that
// package because that package brings a JetStream management library and
// nats-server into every worker binary. Settings that need more than a
// file (credentials looked up with nsc or in 1Password, a SOCKS proxy, the
// Windows certificate store) are refused with a clear error rather than
// ignored.
type natsContext struct {
	URL         string `json:"url"`
	User        string `json:"user"`
	Password    string `json:"password"`
	Token       string `json:"token"`
	Creds       string `json:"creds"`
	NKey        string `json:"nkey"`
	UserJWT     string `json:"user_jwt"`
	UserSeed    string `json:"user_seed"`
	Cert        string `json:"cert"`
	Key         string `json:"key"`
	CA          string `json:"ca"`
	InboxPrefix string `json:"inbox_prefix"`
	TLSFirst    bool   `json:"tls_first"`
	// Settings flotilla refuses.
	NSCLookup  string `json:"nsc"`
	SocksProxy string `json:"socks_proxy"`
	CertStore  string `json:"windows_cert_store"`

	// path is the file the context was read from; empty for none.
	path string
}

// natsConfigDir returns natscli's configuration directory.
func natsConfigDir() (string, error) {
	if parent := os.Getenv("XDG_CONFIG_HOME"); parent != "" {
		return filepath.Join(parent, "nats"), nil
	}
	u, err := user.Current()
	if err != nil {
		return "", err
	}
	if u.HomeDir == "" {
		return "", errors.New("cannot determine home directory")
	}
	return filepath.Join(u.HomeDir, ".config", "nats"), nil
}

// loadNATSContext reads the context named name (a name, or the path of a
// .json file), or the selected one when name is empty. No context
// selected is an empty context.
func loadNATSContext(name string) (*natsContext, error) {
	path := name
	if !strings.HasSuffix(name, ".json") || !isFile(name) {
		dir, err := natsConfigDir()
		if err != nil {
			return nil, err
		}
		if name == "" {
			b, _ := os.ReadFile(filepath.Join(dir, "context.txt"))
			if name = strings.TrimSpace(string(b)); name == "" {
				return &natsContext{}, nil
			}
		}
		if name == "" || strings.Contains(name, "..") || strings.ContainsAny(name, `/\`) {
			return nil, fmt.Errorf("invalid context name %s", name)
		}
		path = filepath.Join(dir, "context", name+".json")
		if !isFile(path) {
			return nil, fmt.Errorf("unknown context %q (known contexts: %s)", name, knownContexts(dir))
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ctx := &natsContext{path: path}
	if err := json.Unmarshal(b, ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, f := range []*string{&ctx.Creds, &ctx.NKey, &ctx.Cert, &ctx.Key, &ctx.CA} {
		*f = expandPath(*f)
	}
	opCreds := "" // credentials read from 1Password
	if strings.HasPrefix(ctx.Creds, "op://") {
		opCreds = ctx.Creds
	}
	for _, unsupported := range []struct{ field, value, instead string }{
		{"nsc", ctx.NSCLookup, "put the path of the credentials file in creds"},
		{"creds", opCreds, "put the path of the credentials file in creds"},
		{"socks_proxy", ctx.SocksProxy, "connect without the proxy"},
		{"windows_cert_store", ctx.CertStore, "use cert and key files"},
	} {
		if unsupported.value != "" {
			return nil, fmt.Errorf("%s: flotilla does not support %s %q: %s", path, unsupported.field, unsupported.value, unsupported.instead)
		}
	}
	return ctx, nil
}

// knownContexts lists the contexts in dir, as `nats context ls` does.
func knownContexts(dir string) string {
	entries, _ := os.ReadDir(filepath.Join(dir, "context"))
	var names []string
	for _, e := range entries {
		if info, err := e.Info(); err == nil && !e.IsDir() && info.Size() > 0 && filepath.Ext(e.Name()) == ".json" {
			names = append(names, strings.TrimSuffix(e.Name(), ".json"))
		}
	}
	if len(names) == 0 {
		return "none"
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// expandPath expands environment variables in path, then a leading ~ to
// the user's home directory.
func expandPath(path string) string {
	path = os.ExpandEnv(path)
	if !strings.HasPrefix(path, "~") {
		return path
	}
	u, err := user.Current()
	if err != nil {
		return path
	}
	return strings.Replace(path, "~", u.HomeDir, 1)
}

func isFile(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

// serverURL returns the URL to connect to.
func (c *natsContext) serverURL() string {
	if c.URL == "" {
		return nats.DefaultURL
	}
	return c.URL
}

// options returns the connection options of the context's credentials,
// TLS and inbox settings, in natscli's order of precedence.
func (c *natsContext) options() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Creds != "":
		opts = append(opts, nats.UserCredentials(c.Creds))
	case c.NKey != "":
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	case c.UserJWT != "" && c.UserSeed != "":
		opts = append(opts, nats.UserJWTAndSeed(c.UserJWT, c.UserSeed))
	case c.UserJWT != "":
		jwt := c.UserJWT
		opts = append(opts, nats.UserJWT(func() (string, error) { return jwt, nil }, func([]byte) ([]byte, error) { return nil, nil }))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.Cert != "" && c.Key != "" {
		opts = append(opts, nats.ClientCert(c.Cert, c.Key))
	}
	if c.CA != "" {
		opts = append(opts, nats.RootCAs(c.CA))
	}
	if c.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	if c.TLSFirst {
		opts = append(opts, nats.TLSHandshakeFirst())
	}
	return opts, nil
}

// note names the file settings came from, for errors.
func (c *natsContext) note() string {
	if c.path == "" {
		return ""
	}
	return fmt.Sprintf(" (natscli context %s)", c.path)
}
