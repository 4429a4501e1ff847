// Package version holds the version every keybroker binary reports.
package version

// Version is semver with a leading v. Release builds set it with
//
//	-ldflags "-X github.com/keybroker/keybroker/internal/version.Version=v1.2.3"
//
// so that the plugin's RunningVersion matches the -version it is registered with.
var Version = "v0.1.0-dev"
