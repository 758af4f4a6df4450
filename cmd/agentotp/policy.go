package main

import (
	"context"
	"fmt"
	"io"
)

// runPolicy implements `agentotp policy check|test` (placeholder until the
// policy engine lands).
func runPolicy(_ context.Context, _ []string, _, stderr io.Writer) int {
	fmt.Fprintln(stderr, "agentotp policy: not built yet")
	return 2
}
