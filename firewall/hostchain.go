package firewall

import (
	"context"
	"errors"
	"fmt"
)

// HostChainLeft handles IMDS-GUARD-HOST while host-network blocking is off
// (a nil Spec.Host): with remove, it deletes every OUTPUT jump to it and
// the chain, as Remove does for both chains; either way it returns the
// families where the chain or a jump to it is (still) in place, so the
// status never says "off" while rules from an earlier run still match.
func (m *Manager) HostChainLeft(ctx context.Context, remove bool) ([]Family, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var left []Family
	var errs []error
	for _, f := range m.families {
		if err := ctx.Err(); err != nil {
			return left, err
		}
		t := m.tables[f]
		o, err := observe(t)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			left = append(left, f) // unknown is not gone
			continue
		}
		jumps := len(indices(o.output, jumpRule(Output, HostChain)))
		if !o.hostExists && jumps == 0 {
			continue
		}
		if !remove {
			left = append(left, f)
			continue
		}
		// The jumps first: a jump to a missing chain cannot be deleted
		// later by name, and the chain cannot go while referenced.
		if jumps > 0 {
			if err = t.Restore(jumpPayload(Output, HostChain, jumps, false)); err != nil {
				err = fmt.Errorf("deleting the %s jumps to %s: %w", Output, HostChain, err)
			}
		}
		if err == nil && o.hostExists {
			if err = t.ClearAndDeleteChain(Table, HostChain); err != nil {
				err = fmt.Errorf("deleting %s: %w", HostChain, err)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			left = append(left, f)
		}
	}
	return left, errors.Join(errs...)
}
