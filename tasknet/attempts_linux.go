package tasknet

import "github.com/imdsguard/imdsguard/attempts"

// OpenAttempts reads the NFLOG group of the task namespace at path (never
// the host's): NFLOG groups are per namespace, like the task's table.
func OpenAttempts(path, pauseID string, sink attempts.Sink) (*attempts.Reader, error) {
	h, self, err := foreignNetns(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	self.Close()
	return attempts.Open(int(h), pauseID, sink)
}
