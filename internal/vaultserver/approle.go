package vaultserver

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/api"
)

// AppRole enables the approle auth method (once), writes policy, and creates
// an AppRole role bound to it. It returns the role_id and a fresh secret_id.
// On a cluster, a leader change midway is retried from the start: every
// step may be repeated (Retry).
func (s *Server) AppRole(ctx context.Context, role, policy, policyHCL string) (roleID, secretID string, err error) {
	err = Retry(ctx, "setting up AppRole "+role, func() error {
		roleID, secretID, err = s.appRole(ctx, role, policy, policyHCL)
		return err
	})
	return roleID, secretID, err
}

func (s *Server) appRole(ctx context.Context, role, policy, policyHCL string) (roleID, secretID string, err error) {
	sys := s.Client.Sys()
	auths, err := sys.ListAuthWithContext(ctx)
	if err != nil {
		return "", "", fmt.Errorf("listing auth methods: %w", err)
	}
	if _, ok := auths["approle/"]; !ok {
		if err := sys.EnableAuthWithOptionsWithContext(ctx, "approle", &api.EnableAuthOptions{Type: "approle"}); err != nil {
			return "", "", fmt.Errorf("enabling approle: %w", err)
		}
	}
	if err := sys.PutPolicyWithContext(ctx, policy, policyHCL); err != nil {
		return "", "", fmt.Errorf("writing policy %s: %w", policy, err)
	}
	l := s.Client.Logical()
	if _, err := l.WriteWithContext(ctx, "auth/approle/role/"+role, map[string]interface{}{
		"token_policies": policy,
		"token_ttl":      "1h",
	}); err != nil {
		return "", "", fmt.Errorf("creating approle role %s: %w", role, err)
	}
	r, err := l.ReadWithContext(ctx, "auth/approle/role/"+role+"/role-id")
	if err != nil {
		return "", "", fmt.Errorf("reading role_id: %w", err)
	}
	sec, err := l.WriteWithContext(ctx, "auth/approle/role/"+role+"/secret-id", nil)
	if err != nil {
		return "", "", fmt.Errorf("creating secret_id: %w", err)
	}
	return r.Data["role_id"].(string), sec.Data["secret_id"].(string), nil
}

// LoginAs creates an AppRole role bound to a policy and logs in with it: an
// app with its own Vault identity.
func (s *Server) LoginAs(ctx context.Context, role, policyHCL string) (*api.Client, error) {
	roleID, secretID, err := s.AppRole(ctx, role, role+"-policy", policyHCL)
	if err != nil {
		return nil, err
	}
	return s.Login(ctx, roleID, secretID)
}

// Login logs in with AppRole and returns a client holding the new token.
func (s *Server) Login(ctx context.Context, roleID, secretID string) (*api.Client, error) {
	c, err := s.Client.Clone()
	if err != nil {
		return nil, err
	}
	c.ClearToken()
	sec, err := c.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]interface{}{
		"role_id": roleID, "secret_id": secretID,
	})
	if err != nil {
		return nil, fmt.Errorf("approle login: %w", err)
	}
	c.SetToken(sec.Auth.ClientToken)
	return c, nil
}
