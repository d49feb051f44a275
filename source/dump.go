package source

import (
	"context"
	"errors"
)

func dump(ctx context.Context, opts DumpOptions) (*DumpReport, error) {
	return nil, errors.New("dump: not implemented yet")
}
