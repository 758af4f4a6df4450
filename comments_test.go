package agentotp_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Comments say the thing itself: they never point at design documents or
// threat ids that are not in this repository.
func TestCommentsCiteNoOutsideDocuments(t *testing.T) {
	outside := regexp.MustCompile(`PRODUCT(\.md| §)|ARCHITECTURE\.md|threats\.md|seed-api|\(threats? [A-E]\d+|threat [A-E]\d+`)
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) && path != "." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if c := strings.Index(line, "//"); c >= 0 && outside.MatchString(line[c:]) {
				t.Errorf("%s:%d cites a document outside the repository: %s", path, i+1, strings.TrimSpace(line[c:]))
			}
		}
		return nil
	})
	require.NoError(t, err)
}
