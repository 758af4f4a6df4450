package main

import (
	"context"
	"testing"
)

// TestRunOffline runs the example as CI sees it: no keys, no network.
func TestRunOffline(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", "")
	t.Setenv("AGENTOTP_URL", "")
	for _, deny := range []bool{false, true} {
		if err := run(context.Background(), deny); err != nil {
			t.Fatalf("deny=%v: %v", deny, err)
		}
	}
}
