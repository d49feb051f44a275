package migrate

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/procmig/migrate/core"
)

// imageNames are the entries a dump writes into its directory (patterns:
// descendants' page streams are pages-PID.img).
var imageNames = []string{core.MetaFile, core.PagesFile, "pages-*.img", core.FilesDir, "." + core.MetaFile + ".tmp"}

// prepareDir makes dir ready for a dump: created if missing, else empty
// (or, with force, rid of an image). The returned undo removes what the
// failed dump may have left: the directory if it was created here, else
// the image entries.
func prepareDir(dir string, force bool) (undo func(), err error) {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		return func() { os.RemoveAll(dir) }, nil
	case err != nil:
		return nil, err
	case !fi.IsDir():
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	removeImage := func() {
		for _, n := range imageNames {
			matches, _ := filepath.Glob(filepath.Join(dir, n))
			for _, m := range matches {
				os.RemoveAll(m)
			}
		}
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(3)
	f.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if len(names) > 0 {
		if !force {
			return nil, fmt.Errorf("%s is not empty (holds %s); use an empty or new directory, or --force", dir, strings.Join(names, ", "))
		}
		removeImage()
	}
	return removeImage, nil
}
