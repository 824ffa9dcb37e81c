package client

import (
	"context"
	"net/http"
)

// Model is a registered model as GET /v1/models lists it: its manifest
// and the hosts that hold it.
type Model struct {
	Name string `json:"name"`
	// Engine names the engine that runs the model; empty means the
	// built-in one.
	Engine string `json:"engine,omitempty"`
	// Kind is "lora" for a LoRA; empty means a model jobs run.
	Kind   string      `json:"kind,omitempty"`
	Format string      `json:"format"`
	Files  []ModelFile `json:"files"`
	// Hosts hold the model on disk, each with the fraction of it in RAM.
	Hosts []ModelHost `json:"hosts"`
}

// ModelFile is one file of a model.
type ModelFile struct {
	Name string `json:"name"`
	Role string `json:"role,omitempty"`
	// URL is where the file lives, "s3://bucket/key".
	URL  string `json:"url"`
	Size int64  `json:"size"`
	// Digest is "sha256:<hex>".
	Digest string `json:"digest,omitempty"`
}

// ModelHost is a host that holds a model.
type ModelHost struct {
	Host string `json:"host"`
	// Resident is the smallest fraction of the model's files in the
	// host's RAM, 0 to 1.
	Resident float64 `json:"resident"`
}

// ModelError names a registered model whose manifest cannot be used.
type ModelError struct {
	Name  string `json:"name"`
	Error string `json:"error"`
}

// ModelList is the API's answer to GET /v1/models.
type ModelList struct {
	Models []Model `json:"models"`
	// Errors names each model whose manifest cannot be read or used; the
	// others are listed all the same.
	Errors []ModelError `json:"errors"`
}

// Models lists the registry's models and the hosts that hold each (GET
// /v1/models).
func (c *Client) Models(ctx context.Context) (*ModelList, error) {
	var l ModelList
	if err := c.doJSON(ctx, http.MethodGet, "/v1/models", nil, http.StatusOK, &l); err != nil {
		return nil, err
	}
	return &l, nil
}
