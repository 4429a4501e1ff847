package sidecar

import "strings"

// validateRoutes checks each route block and the routes together (no two
// claim one method of one prefix). A route with a problem is left out of
// the grouping: its problems are reported, and leaving it out cannot make
// the others conflict.
func validateRoutes(c *Config, s *settings) []error {
	var p problems
	for _, r := range c.Routes {
		rt, errs := parseRoute(r)
		if len(errs) > 0 {
			p = append(p, errs...)
			continue
		}
		s.routes = append(s.routes, rt)
	}
	var err error
	s.groups, err = groupRoutes(s.routes)
	p.add(err)
	return p
}

// parseRoute checks one route block and returns it parsed.
func parseRoute(r RouteConfig) (route, problems) {
	var p problems
	prefix, err := routePrefix(r.PathPrefix)
	p.add(err)
	rt := route{prefix: prefix, fold: r.CaseInsensitive, scopes: r.Scopes, public: r.Public, cost: 1,
		usageHeader: r.UsageHeader, openaiUsage: r.OpenAIUsage, fallbackCost: r.UsageFallback == "cost", delegation: r.Delegation}
	if r.Cost != nil {
		rt.cost = *r.Cost
	}
	p.routeCharge(r, rt.cost)
	p.routeAccess(r)
	for _, m := range r.Methods {
		if m == "" || strings.ToUpper(m) != m || strings.ContainsAny(m, " \t/") {
			p.addf("route %q: method %q must be an uppercase HTTP method", r.PathPrefix, m)
		}
	}
	rt.methods = append(rt.methods, r.Methods...)
	return rt, p
}

// routeCharge checks what a request on the route costs: a bounded cost,
// at most one source of usage, a fallback only with a source.
func (p *problems) routeCharge(r RouteConfig, cost int64) {
	if cost < 0 || cost > maxUnitsRequest {
		p.addf("route %q: cost must be between 0 and %d", r.PathPrefix, int64(maxUnitsRequest))
	}
	if r.UsageHeader != "" && r.OpenAIUsage {
		p.addf("route %q: set usage_header or openai_usage, not both", r.PathPrefix)
	}
	if r.UsageHeader != "" && !validHeaderName(r.UsageHeader) {
		p.addf("route %q: usage_header %q is not a header name", r.PathPrefix, r.UsageHeader)
	}
	if r.UsageFallback != "" && r.UsageFallback != "hold" && r.UsageFallback != "cost" {
		p.addf("route %q: usage_fallback must be \"hold\" or \"cost\"", r.PathPrefix)
	}
	if r.UsageFallback != "" && r.UsageHeader == "" && !r.OpenAIUsage {
		p.addf("route %q: usage_fallback goes with usage_header or openai_usage", r.PathPrefix)
	}
}

// routeAccess checks who may use the route: delegation's values, and a
// public route, which has no caller, with nothing that needs one.
func (p *problems) routeAccess(r RouteConfig) {
	if r.Delegation != "" && r.Delegation != delegationRequire && r.Delegation != delegationForbid {
		p.addf("route %q: delegation must be %q or %q", r.PathPrefix, delegationRequire, delegationForbid)
	}
	if !r.Public {
		return
	}
	if r.Delegation != "" {
		p.addf("route %q: a public route has no caller; remove delegation", r.PathPrefix)
	}
	if r.Cost != nil || r.UsageHeader != "" || r.OpenAIUsage {
		p.addf("route %q: a public route has no caller to charge; remove cost, usage_header and openai_usage", r.PathPrefix)
	}
	if len(r.Scopes) > 0 {
		p.addf("route %q: a public route cannot require scopes", r.PathPrefix)
	}
}
