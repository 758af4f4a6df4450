package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/agentotp/agentotp/policy"
)

const policyUsage = `usage:
  agentotp policy check FILE|DIR...   validate policy files (exit 0 valid, 1 invalid, 2 usage)
  agentotp policy test DIR            run *_test.yaml cases under DIR
                                      (exit 0 all pass, 1 a case failed, 2 invalid input)
`

// runPolicy implements `agentotp policy check|test`.
func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	switch args[0] {
	case "check":
		if len(args) < 2 {
			fmt.Fprint(stderr, policyUsage)
			return 2
		}
		set, err := policy.LoadFiles(args[1:]...)
		if err != nil {
			var list policy.ErrorList
			if errors.As(err, &list) {
				for _, e := range list {
					fmt.Fprintln(stderr, e)
				}
				fmt.Fprintf(stderr, "%d problem(s); the policies were rejected\n", len(list))
			} else {
				fmt.Fprintln(stderr, err)
			}
			return 1
		}
		fmt.Fprintf(stdout, "ok: %d rule(s), version %s\n", set.Len(), set.Version())
		return 0
	case "test":
		if len(args) != 2 {
			fmt.Fprint(stderr, policyUsage)
			return 2
		}
		rep := policy.RunTests(ctx, args[1], stdout)
		for _, msg := range rep.Invalid {
			fmt.Fprintln(stderr, "invalid:", msg)
		}
		fmt.Fprintf(stdout, "%d passed, %d failed, %d invalid\n", rep.Passed, rep.Failed, len(rep.Invalid))
		switch {
		case len(rep.Invalid) > 0:
			return 2
		case rep.Failed > 0:
			return 1
		}
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, policyUsage)
		return 0
	}
	fmt.Fprintf(stderr, "agentotp policy: unknown subcommand %q\n", args[0])
	fmt.Fprint(stderr, policyUsage)
	return 2
}
