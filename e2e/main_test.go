package e2e

import (
	"testing"

	"migrate/e2e/fixture"
)

func TestMain(m *testing.M) { fixture.Main(m) }
