package target

import (
	"context"
	"errors"
)

func restore(ctx context.Context, opts RestoreOptions) (*RestoreReport, error) {
	return nil, errors.New("restore: not implemented yet")
}
