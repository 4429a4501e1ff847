package sidecar

import (
	"cmp"
	"time"
)

// validateMetering checks how budgets are reserved and reported, how key
// use is reported, and where rate limits hold.
func validateMetering(c *Config, s *settings) []error {
	var p problems
	s.name = c.Name
	s.reserveRequests = cmp.Or(c.BudgetReserveRequests, 10)
	if s.reserveRequests < 1 || s.reserveRequests > 10_000 {
		p.addf("budget_reserve_requests must be between 1 and 10000")
	}
	reportOK := p.duration("budget_report_interval", c.BudgetReportInterval, time.Second, &s.reportInterval)
	ttlOK := p.duration("budget_reservation_ttl", c.BudgetReservationTTL, 30*time.Second, &s.reservationTTL)
	if s.reservationTTL < 15*time.Second || s.reservationTTL > 10*time.Minute || s.reservationTTL%time.Second != 0 {
		p.addf("budget_reservation_ttl must be whole seconds between 15s and 10m")
	}
	if reportOK && ttlOK && s.reportInterval > s.reservationTTL/3 {
		p.addf("budget_report_interval (%s) must be at most a third of budget_reservation_ttl (%s), so reports renew reservations in time", s.reportInterval, s.reservationTTL)
	}
	p.duration("budget_idle_release", c.BudgetIdleRelease, 5*time.Second, &s.idleRelease)
	if c.UsageReportInterval != "off" { // "off": no reports, usageReport 0
		p.duration("usage_report_interval", c.UsageReportInterval, time.Minute, &s.usageReport)
	}
	switch c.RateLimitScope {
	case "", "sidecar":
	case "cluster":
		s.clusterRate = true
	default:
		p.addf("rate_limit_scope must be \"sidecar\" or \"cluster\", got %q", c.RateLimitScope)
	}
	return p
}

// validateFailedAuth checks the guard on uncached API keys Vault refuses:
// per client, failed_auth_burst, then failed_auth_rate per second, and
// vault_verify_concurrency lookups at once.
func validateFailedAuth(c *Config, s *settings) []error {
	var p problems
	s.failedAuthRate, s.failedAuthBurst, s.verifyConcurrency = 1, cmp.Or(c.FailedAuthBurst, 10), cmp.Or(c.VaultVerifyConcurrency, 32)
	if c.FailedAuthRate != nil {
		s.failedAuthRate = *c.FailedAuthRate
	}
	if s.failedAuthRate <= 0 || s.failedAuthRate > 1000 {
		p.addf("failed_auth_rate must be above 0 and at most 1000 per second")
	}
	if s.failedAuthBurst < 1 || s.failedAuthBurst > 10_000 {
		p.addf("failed_auth_burst must be between 1 and 10000")
	}
	if s.verifyConcurrency < 1 || s.verifyConcurrency > 1024 {
		p.addf("vault_verify_concurrency must be between 1 and 1024")
	}
	return p
}
