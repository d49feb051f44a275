package filesync

import (
	"testing"

	"github.com/procmig/migrate/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }
