package cli

import "strings"

// Authenticated reports whether the settings authenticate to NATS: any
// kind of credentials, a client certificate, or a user in the URL.
func (c *Common) Authenticated() bool {
	return c.Creds != "" || c.NKey != "" || c.User != "" || c.Token != "" || c.TLSCert != "" || strings.Contains(c.NATS, "@")
}
