package sidecar

import (
	"cmp"
	"net/url"
	"strings"
)

// validateVault checks the vault block: where Vault is and how the
// sidecar logs in (AppRole). The files it names are read at start, not
// here.
func validateVault(c *Config, s *settings) []error {
	v := c.Vault
	if v == nil {
		var p problems
		p.addf("a vault block is required (address, mount, role_id or role_id_file, secret_id_file)")
		return p
	}
	var p problems
	check := v.Addresses
	switch {
	case v.Address != "" && len(v.Addresses) > 0:
		p.addf("vault: set address or addresses, not both")
		check = append([]string{v.Address}, v.Addresses...)
	case v.Address != "":
		s.vaultAddrs = []string{v.Address}
		check = s.vaultAddrs
	default:
		s.vaultAddrs = v.Addresses
	}
	for _, a := range check {
		if u, err := url.Parse(a); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.addf("vault: address %q is not an http(s) URL", a)
		}
	}
	s.vaultCACert = v.CACert
	s.mount = strings.Trim(cmp.Or(v.Mount, "keybroker"), "/")
	s.roleID, s.roleIDFile, s.secretIDFile = v.RoleID, v.RoleIDFile, v.SecretIDFile
	if (s.roleID == "") == (s.roleIDFile == "") {
		p.addf("vault: set exactly one of role_id and role_id_file")
	}
	return p
}

// validateLogs checks the process log and the decision log.
func validateLogs(c *Config, s *settings) []error {
	var p problems
	s.logLevel = cmp.Or(c.LogLevel, "info")
	s.logFormat = cmp.Or(c.LogFormat, "standard")
	s.decisionLogPath, s.decisionLogSample = c.DecisionLogPath, 1
	if c.DecisionLogSampleAllowed == nil {
		return p
	}
	s.decisionLogSample = *c.DecisionLogSampleAllowed
	if s.decisionLogPath == "" {
		p.addf("decision_log_sample_allowed needs decision_log_path, which turns the decision log on")
	}
	if !(s.decisionLogSample >= 0 && s.decisionLogSample <= 1) {
		p.addf("decision_log_sample_allowed must be between 0 and 1 (the fraction of allowed decisions logged; every denial is)")
	}
	return p
}
