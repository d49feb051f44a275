package transport

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps transport what its doc says: it knows nothing of
// processes or pages. It may use the standard library and yamux only.
func TestDeps(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list dependencies")
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep != "github.com/procmig/migrate/transport" && dep != "github.com/hashicorp/yamux" {
			t.Errorf("transport depends on %s", dep)
		}
	}
}
