package sidecar

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/keybroker/keybroker/sidecar/internal/reqtarget"
)

// route is one route block: what a request under prefix needs.
type route struct {
	prefix string // canonical, no trailing slash except "/"
	fold   bool   // case_insensitive
	// methods empty: any method not claimed by another route of the same
	// prefix.
	methods []string
	scopes  []string
	public  bool

	cost        int64
	usageHeader string
	openaiUsage bool
	// fallbackCost: usage_fallback = "cost", charge cost when the usage
	// cannot be read; by default the hold is charged.
	fallbackCost bool
	// delegation: delegationRequire, delegationForbid, or "" for either.
	delegation string
}

// A route's delegation setting.
const (
	delegationRequire = "require"
	delegationForbid  = "forbid"
)

// routeGroup holds the routes sharing one prefix. The longest prefix that
// covers a path decides, whatever the method: a method it does not list is a
// 405, never a parent route's rules.
type routeGroup struct {
	prefix string
	fold   bool
	routes []*route
	allow  string // the Allow header for a 405; "" when a route takes any method
}

// defaultRoute is what a request matching no route costs, with allow_unmatched.
var defaultRoute = route{cost: 1}

// covers reports whether prefix p covers path at a segment boundary: "/api"
// covers "/api" and "/api/x", never "/apix".
func (g *routeGroup) covers(path string) bool {
	p := g.prefix
	if p == "/" {
		return true
	}
	if len(path) < len(p) || (len(path) > len(p) && path[len(p)] != '/') {
		return false
	}
	if g.fold {
		return strings.EqualFold(path[:len(p)], p)
	}
	return path[:len(p)] == p
}

// match finds the route for a canonical path. With no covering route, g is
// nil. With a covering prefix but no route for the method, rt is nil and g
// says which methods are allowed.
func (s *settings) match(method, path string) (rt *route, g *routeGroup) {
	for _, grp := range s.groups {
		if !grp.covers(path) {
			continue
		}
		var anyMethod *route
		for _, r := range grp.routes {
			switch {
			case len(r.methods) == 0:
				anyMethod = r
			case slices.Contains(r.methods, method),
				method == "HEAD" && slices.Contains(r.methods, "GET"): // HEAD is a GET without a body
				return r, grp
			}
		}
		return anyMethod, grp
	}
	return nil, nil
}

// groupRoutes sorts routes into groups, longest prefix first, and refuses
// two routes that claim the same method on the same prefix.
func groupRoutes(routes []route) ([]*routeGroup, error) {
	byPrefix := map[string]*routeGroup{}
	var groups []*routeGroup
	for i := range routes {
		r := &routes[i]
		key := r.prefix
		if r.fold {
			key = strings.ToLower(key)
		}
		g := byPrefix[key]
		if g == nil {
			g = &routeGroup{prefix: r.prefix, fold: r.fold}
			byPrefix[key] = g
			groups = append(groups, g)
		}
		if g.fold != r.fold {
			return nil, fmt.Errorf("route %q: routes of one prefix must agree on case_insensitive", r.prefix)
		}
		for _, o := range g.routes {
			if len(o.methods) == 0 && len(r.methods) == 0 {
				return nil, fmt.Errorf("route %q: two routes for the same prefix take any method; give one of them methods", r.prefix)
			}
			for _, m := range r.methods {
				if slices.Contains(o.methods, m) {
					return nil, fmt.Errorf("route %q: method %s is claimed by two routes of the same prefix", r.prefix, m)
				}
			}
		}
		g.routes = append(g.routes, r)
	}
	for _, g := range groups {
		var allow []string
		for _, r := range g.routes {
			if len(r.methods) == 0 {
				allow = nil
				break
			}
			allow = append(allow, r.methods...)
			if slices.Contains(r.methods, "GET") && !slices.Contains(allow, "HEAD") {
				allow = append(allow, "HEAD")
			}
		}
		sort.Strings(allow)
		g.allow = strings.Join(slices.Compact(allow), ", ")
	}
	sort.SliceStable(groups, func(i, j int) bool { return len(groups[i].prefix) > len(groups[j].prefix) })
	return groups, nil
}

// routePrefix checks a configured prefix and returns it canonical: it must
// be a canonical path (no dot segments, '//', escapes, ';' or '\'), and a
// trailing slash is dropped, so "/api/" and "/api" both mean "/api and
// everything under it".
func routePrefix(p string) (string, error) {
	if strings.IndexByte(p, '%') >= 0 {
		return "", fmt.Errorf("route %q: write the path prefix decoded, without %%-escapes", p)
	}
	c, ok := reqtarget.CanonicalPath(p)
	if !ok {
		return "", fmt.Errorf("route %q: the path prefix must start with / and have no empty, '.' or '..' segments, ';', '\\' or control characters", p)
	}
	if len(c) > 1 {
		c = strings.TrimSuffix(c, "/")
	}
	return c, nil
}
