// Package verifier turns BPF load failures into errors a person can act on:
// the verifier's whole log, not its last line.
package verifier

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Explain wraps err from loading a collection or program. A verifier
// rejection keeps its complete log (cilium/ebpf shows only the last lines
// with %v); anything else is returned with what was being loaded.
func Explain(what string, err error) error {
	if err == nil {
		return nil
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("load %s: the verifier rejected it: %w\nverifier log:\n%+v", what, err, verr)
	}
	return fmt.Errorf("load %s: %w", what, err)
}
