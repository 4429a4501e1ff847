package backend

import (
	"context"
	"fmt"
	"time"

	uuid "github.com/hashicorp/go-uuid"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// tenantEntry is a tenant's spend ceiling, shared by all its credentials, and
// the tenant's account in the current period.
type tenantEntry struct {
	Budget       int64         `json:"budget"`
	BudgetPeriod time.Duration `json:"budget_period"`
	// ID tells this ceiling from a deleted one of the same name, so that
	// reservations granted against that one never count against this one.
	ID string `json:"id,omitempty"`
	pool
}

// legacyTenantID is the ID of a ceiling stored before ceilings had one.
const legacyTenantID = "initial"

func pathTenants(b *backend) []*framework.Path {
	fields := map[string]*framework.FieldSchema{
		"name": {
			Type:        framework.TypeString,
			Description: "The tenant, as set on roles.",
			Required:    true,
		},
		"budget": {
			Type:        framework.TypeInt64,
			Description: fmt.Sprintf("Units all of the tenant's credentials together may spend per budget_period (1 to %d).", int64(maxUnits)),
		},
		"budget_period": {
			Type:         framework.TypeDurationSecond,
			Description:  "Length of the tenant's budget period, starting at fixed boundaries as for roles. Default: 24h.",
			DisplayAttrs: &framework.DisplayAttributes{Value: "24h"},
		},
	}
	list, item := pathAttrs("tenants"), pathAttrs("tenant")
	list.ItemType, item.ItemType = "Tenant", "Tenant"
	return []*framework.Path{
		{
			Pattern:      "tenants/?$",
			DisplayAttrs: list,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: operation(b.pathTenantList, listAnswer("Tenants with a budget ceiling.", "")),
			},
			HelpSynopsis:    "List tenants with a budget ceiling.",
			HelpDescription: "Lists the tenants configured under keybroker/tenants/<name>.",
		},
		{
			Pattern:        "tenants/" + framework.GenericNameRegex("name"),
			Fields:         fields,
			ExistenceCheck: b.tenantExists,
			DisplayAttrs:   item,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.CreateOperation: operation(b.pathTenantWrite, noContent()),
				logical.UpdateOperation: operation(b.pathTenantWrite, noContent()),
				logical.ReadOperation:   operation(b.pathTenantRead, answers(merged(spendFields(), echoed(fields, "name")))),
				logical.DeleteOperation: operation(b.pathTenantDelete, noContent()),
			},
			HelpSynopsis: "Manage a tenant's budget ceiling and read its spend.",
			HelpDescription: `A tenant ceiling caps what all credentials of the tenant spend together, on
top of each credential's own budget. Credentials of a tenant are metered from
the moment the ceiling exists: API keys at once, agent JWTs minted after it.
Read shows the ceiling and the current period: limit, used, reserved,
remaining and reset. Changing budget keeps what was used this period;
changing budget_period starts a new period. Delete removes the ceiling.`,
		},
	}
}

func getTenant(ctx context.Context, s logical.Storage, name string) (*tenantEntry, error) {
	t, err := getJSON[tenantEntry](ctx, s, tenantPrefix+name)
	if t != nil && t.ID == "" {
		t.ID = legacyTenantID
	}
	return t, err
}

func (b *backend) tenantExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	t, err := getTenant(ctx, req.Storage, d.Get("name").(string))
	return t != nil, err
}

func (b *backend) pathTenantList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, tenantPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing tenants: %w", err)
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathTenantWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if err := validateTenant(name); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	defer b.meters.lockTenant(name)()
	t, err := getTenant(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if t == nil {
		id, err := uuid.GenerateUUID()
		if err != nil {
			return nil, fmt.Errorf("generating tenant id: %w", err)
		}
		t = &tenantEntry{BudgetPeriod: defaultBudgetPeriod, ID: id}
	}
	if v, ok := d.GetOk("budget"); ok {
		t.Budget = v.(int64)
	}
	if v, ok := d.GetOk("budget_period"); ok {
		t.BudgetPeriod = time.Duration(v.(int)) * time.Second
	}
	if t.Budget <= 0 || t.Budget > maxUnits {
		return logical.ErrorResponse("budget must be between 1 and %d, got %d", int64(maxUnits), t.Budget), nil
	}
	if err := validateBudgetPeriod(t.BudgetPeriod); err != nil {
		return logical.ErrorResponse(err.Error()), nil
	}
	t.roll(time.Now(), t.BudgetPeriod)
	if err := putJSON(ctx, req.Storage, tenantPrefix+name, t); err != nil {
		return nil, err
	}
	b.keyRecords.add("") // verifiers learn the metered tenants anew
	return nil, nil
}

func (b *backend) pathTenantRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	t, err := getTenant(ctx, req.Storage, d.Get("name").(string))
	if err != nil || t == nil {
		return nil, err
	}
	now := time.Now()
	t.roll(now, t.BudgetPeriod)
	data := t.status()
	data["budget"] = t.Budget
	data["budget_period"] = int64(t.BudgetPeriod.Seconds())
	return &logical.Response{Data: data}, nil
}

func (b *backend) pathTenantDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	defer b.meters.lockTenant(name)()
	if err := req.Storage.Delete(ctx, tenantPrefix+name); err != nil {
		return nil, fmt.Errorf("deleting tenant: %w", err)
	}
	b.keyRecords.add("")
	return nil, nil
}

// status is the tenant's account as reads show it.
func (t *tenantEntry) status() map[string]interface{} {
	return spendStatus(t.Budget, t.Used, t.reserved(), t.remaining(t.Budget), t.PeriodStart, t.BudgetPeriod)
}
