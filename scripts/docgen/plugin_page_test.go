package main

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Generation fails, naming each, on a path without HelpSynopsis or
// HelpDescription and on a request or answer field without a description:
// vault path-help would show "<no description>".
func TestPathWithoutHelpIsAnError(t *testing.T) {
	paths := []*framework.Path{
		{Pattern: "ok$", HelpSynopsis: "s", HelpDescription: "d", Fields: map[string]*framework.FieldSchema{"f": {Type: framework.TypeString, Description: "f"}}},
		{Pattern: "nosyn$", HelpDescription: "d"},
		{Pattern: "nodesc$", HelpSynopsis: "s"},
		{Pattern: "field$", HelpSynopsis: "s", HelpDescription: "d", Fields: map[string]*framework.FieldSchema{"g": {Type: framework.TypeString, Description: " \n"}}},
		{Pattern: "answer$", HelpSynopsis: "s", HelpDescription: "d", Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{Responses: map[int][]framework.Response{200: {{Description: "OK", Fields: map[string]*framework.FieldSchema{"h": {Type: framework.TypeInt}}}}}},
		}},
	}
	_, err := renderPaths(paths)
	if err == nil {
		t.Fatal("paths without help were accepted")
	}
	for _, want := range []string{`path "nosyn$" lacks`, `path "nodesc$" lacks`, `field "g" of path "field$" has no description`, `answer field "h" of read "answer$" (200) has no description`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), `"ok$"`) {
		t.Errorf("a documented path is reported:\n%v", err)
	}
}

func TestReadablePattern(t *testing.T) {
	for re, want := range map[string]string{
		"roles/?$": "roles/",
		"roles/" + framework.GenericNameRegex("name"):                                                             "roles/{name}",
		"keys/" + framework.GenericNameRegex("role") + "/id/" + framework.GenericNameRegex("key_id") + "/rotate$": "keys/{role}/id/{key_id}/rotate",
		`roles/(?P<name>\w+)/(?P<action>suspend|resume)$`:                                                         "roles/{name}/(suspend|resume)",
		`\.well-known/openid-configuration$`:                                                                      ".well-known/openid-configuration",
		"^jwks$":                                                                                                  "jwks",
	} {
		if got := readablePattern(re); got != want {
			t.Errorf("readablePattern(%q) = %q, want %q", re, got, want)
		}
	}
}
