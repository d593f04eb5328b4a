package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/flotilla-io/flotilla/coordinator/client"
	"github.com/flotilla-io/flotilla/internal/cli"
	"github.com/flotilla-io/flotilla/internal/fleettest"
	"github.com/flotilla-io/flotilla/internal/testutil"
	"github.com/flotilla-io/flotilla/objectstore"
	"github.com/flotilla-io/flotilla/subjects"
	"github.com/flotilla-io/flotilla/worker"
)

// method is one way to authenticate: how to configure the server, how a
// process connects, and settings that must be refused.
type method struct {
	name string
	// setup configures opts and returns the process settings (NATS URL
	// not set) and refused settings with the error each must contain.
	setup func(t *testing.T, opts *server.Options) (ok cli.Common, refused map[string]refusal)
}

// refusal is settings the server must refuse, with the error it gives
// (lower case).
type refusal struct {
	c    cli.Common
	want string
}

// tlsRefused is how a client learns that the server refused its
// certificate: from the server's alert, or (with TLS 1.3, where the client
// may finish its handshake first) from the connection closing after it.
const tlsRefused = "certificate required|closed by remote after tls handshake"

// TestConnectMethods runs a coordinator, a worker and a client connected
// through cli.Common (as the flotilla binary connects) with every
// authentication method against a server that requires it, checks that a
// count job's state is exact, and that wrong credentials are refused.
func TestConnectMethods(t *testing.T) {
	for _, m := range []method{
		{"user-password", func(t *testing.T, o *server.Options) (cli.Common, map[string]refusal) {
			o.Username, o.Password = "flotilla", "s3cret"
			return cli.Common{User: "flotilla", Password: "s3cret"}, map[string]refusal{
				"wrong password": {cli.Common{User: "flotilla", Password: "guess"}, "authorization violation"},
				"no credentials": {cli.Common{}, "authorization violation"},
			}
		}},
		{"token", func(t *testing.T, o *server.Options) (cli.Common, map[string]refusal) {
			o.Authorization = "t0ken"
			return cli.Common{Token: "t0ken"}, map[string]refusal{
				"wrong token": {cli.Common{Token: "guess"}, "authorization violation"},
			}
		}},
		{"nkey", func(t *testing.T, o *server.Options) (cli.Common, map[string]refusal) {
			seed, pub := userNKey(t)
			other, _ := userNKey(t)
			o.Nkeys = []*server.NkeyUser{{Nkey: pub}}
			return cli.Common{NKey: seed}, map[string]refusal{
				"unknown nkey": {cli.Common{NKey: other}, "authorization violation"},
			}
		}},
		{"creds", credsSetup},
		{"tls-with-password", func(t *testing.T, o *server.Options) (cli.Common, map[string]refusal) {
			pki := newPKI(t)
			o.TLSConfig = serverTLS(t, pki, false)
			o.TLS, o.TLSTimeout = true, 5
			o.Username, o.Password = "flotilla", "s3cret"
			return cli.Common{TLSCA: pki.ca, User: "flotilla", Password: "s3cret"}, map[string]refusal{
				"unknown CA": {cli.Common{User: "flotilla", Password: "s3cret"}, "certificate signed by unknown authority"},
			}
		}},
		{"mutual-tls", func(t *testing.T, o *server.Options) (cli.Common, map[string]refusal) {
			pki := newPKI(t)
			o.TLSConfig = serverTLS(t, pki, true)
			o.TLS, o.TLSVerify, o.TLSTimeout = true, true, 5
			return cli.Common{TLSCA: pki.ca, TLSCert: pki.clientCert, TLSKey: pki.clientKey}, map[string]refusal{
				"no client certificate":     {cli.Common{TLSCA: pki.ca}, tlsRefused},
				"certificate of another CA": {cli.Common{TLSCA: pki.ca, TLSCert: pki.strangerCert, TLSKey: pki.strangerKey}, tlsRefused},
			}
		}},
	} {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			opts := testutil.NATSOptions(t.TempDir())
			ok, refused := m.setup(t, opts)
			srv := testutil.RunNATSWithOptions(t, opts)
			ok.NATS = srv.ClientURL()
			for what, r := range refused {
				r.c.NATS = srv.ClientURL()
				nc, err := r.c.Connect("refused", false)
				if err == nil {
					nc.Close()
					t.Errorf("%s: connected", what)
				} else if !containsAny(strings.ToLower(err.Error()), strings.Split(r.want, "|")) {
					t.Errorf("%s: %v, want an error with %q", what, err, r.want)
				} else {
					t.Logf("%s: refused: %v", what, err)
				}
			}
			runCountJob(t, ok)
		})
	}
}

// runCountJob runs a coordinator, a worker and a client, each connecting
// with c, and checks a count job's state.
func runCountJob(t *testing.T, c cli.Common) {
	t.Helper()
	store, err := objectstore.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := logger(&fleettest.Buffer{})
	coordNC, _ := dial(t, c, "flotilla coordinator", true)
	workerNC, _ := dial(t, c, "flotilla worker", true)
	clientNC, _ := dial(t, c, "flotilla cli", false)
	startCoordinator(t, coordNC, store, log)
	startWorker(t, workerNC, "w1", store, log)
	api := client.New(clientNC, subjects.Namespace{})
	waitWorkers(t, api, 1)
	if _, err := api.Submit(context.Background(), countSpec("clicks", 2, 0), 0, ""); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	publish(t, clientNC, 300, 20, 7, truth)
	checkState(t, api, "clicks", truth)
}

// TestWorkerFlagsCarryCredentials checks that `flotilla worker` takes the
// same connection settings as every other command, from flags or the
// environment.
func TestWorkerFlagsCarryCredentials(t *testing.T) {
	t.Setenv("NATS_USER", "")
	t.Setenv("NATS_PASSWORD", "")
	t.Setenv("NATS_CREDS", "/run/secrets/worker.creds")
	t.Setenv("NATS_INBOX_PREFIX", "_INBOX.worker-1")
	f, err := worker.ParseFlags([]string{"-store", "mem://", "-tlsca", "ca.pem", "-tlscert", "c.pem", "-tlskey", "k.pem", "-name", "worker-1"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if f.Creds != "/run/secrets/worker.creds" || f.InboxPrefix != "_INBOX.worker-1" || f.TLSCA != "ca.pem" ||
		f.TLSCert != "c.pem" || f.TLSKey != "k.pem" || f.Name != "worker-1" {
		t.Errorf("flags: %+v", f)
	}
	f, err = worker.ParseFlags([]string{"-store", "mem://", "-creds", "", "-user", "worker-1", "-password", "pw"}, os.Stderr)
	if err != nil || f.User != "worker-1" || f.Password != "pw" || f.Creds != "" {
		t.Errorf("flags: %+v, %v", f, err)
	}
}

// userNKey writes a fresh user nkey seed to a file and returns the file
// and the public key.
func userNKey(t *testing.T) (seedFile, public string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	public, _ = kp.PublicKey()
	seedFile = filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return seedFile, public
}

// credsSetup runs the server in operator (decentralized JWT) mode: an
// operator, a system account and a FLOTILLA account with JetStream, held
// by a memory resolver, and a user of FLOTILLA whose JWT and seed make the
// credentials file. A user signed by an account the operator never signed
// is refused.
func credsSetup(t *testing.T, o *server.Options) (cli.Common, map[string]refusal) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	op, err := nkeys.CreateOperator()
	must(err)
	opPub, _ := op.PublicKey()
	opClaims := jwt.NewOperatorClaims(opPub)
	opClaims.Name = "flotilla-test"
	opJWT, err := opClaims.Encode(op)
	must(err)
	opClaims, err = jwt.DecodeOperatorClaims(opJWT)
	must(err)

	resolver := &server.MemAccResolver{}
	account := func(name string, js bool) nkeys.KeyPair {
		kp, err := nkeys.CreateAccount()
		must(err)
		pub, _ := kp.PublicKey()
		ac := jwt.NewAccountClaims(pub)
		ac.Name = name
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		tok, err := ac.Encode(op)
		must(err)
		must(resolver.Store(pub, tok))
		return kp
	}
	sys := account("SYS", false)
	acc := account("FLOTILLA", true)
	o.TrustedOperators = []*jwt.OperatorClaims{opClaims}
	o.AccountResolver = resolver
	o.SystemAccount, _ = sys.PublicKey()

	creds := func(signer nkeys.KeyPair) string {
		u, err := nkeys.CreateUser()
		must(err)
		pub, _ := u.PublicKey()
		uc := jwt.NewUserClaims(pub)
		uc.Name = "flotilla"
		tok, err := uc.Encode(signer)
		must(err)
		seed, _ := u.Seed()
		b, err := jwt.FormatUserConfig(tok, seed)
		must(err)
		f := filepath.Join(t.TempDir(), "user.creds")
		must(os.WriteFile(f, b, 0o600))
		return f
	}
	rogue, err := nkeys.CreateAccount()
	must(err)
	return cli.Common{Creds: creds(acc)}, map[string]refusal{
		"user of an unknown account": {cli.Common{Creds: creds(rogue)}, "authorization violation"},
	}
}

// pki is a private CA and certificates it (or a stranger) signed, as PEM
// files.
type pki struct {
	ca                        string
	serverCert, serverKey     string
	clientCert, clientKey     string
	strangerCert, strangerKey string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	caKey, caCert := newCA(t, "flotilla test CA")
	strangerKey, strangerCA := newCA(t, "someone else's CA")
	var p pki
	p.ca = writePEM(t, dir, "ca.pem", "CERTIFICATE", caCert.Raw)
	p.serverCert, p.serverKey = issue(t, dir, "server", caCert, caKey, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = issue(t, dir, "client", caCert, caKey, x509.ExtKeyUsageClientAuth)
	p.strangerCert, p.strangerKey = issue(t, dir, "stranger", strangerCA, strangerKey, x509.ExtKeyUsageClientAuth)
	return p
}

func newCA(t *testing.T, name string) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

// issue writes a certificate for 127.0.0.1 signed by ca, and its key.
func issue(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+"-key.pem", "EC PRIVATE KEY", kb)
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	f := filepath.Join(dir, name)
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// serverTLS is the server's TLS configuration; verify requires a client
// certificate signed by the CA.
func serverTLS(t *testing.T, p pki, verify bool) *tls.Config {
	t.Helper()
	cfg, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: p.serverCert, KeyFile: p.serverKey, CaFile: p.ca, Verify: verify})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
