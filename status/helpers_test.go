package status

import (
	"io"
	"os"
	"testing"

	"github.com/sirupsen/logrus"
)

func testLog(testing.TB) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	if testing.Verbose() {
		l.SetOutput(os.Stderr)
	}
	return logrus.NewEntry(l)
}
