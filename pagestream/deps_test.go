package pagestream

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps pagestream what its doc says: a format that knows nothing
// of processes or transports. It may use the standard library and
// klauspost/compress only.
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
		if dep != "github.com/procmig/migrate/pagestream" && dep != "github.com/klauspost/compress" && !strings.HasPrefix(dep, "github.com/klauspost/compress/") {
			t.Errorf("pagestream depends on %s", dep)
		}
	}
}
