//go:build !unix

package mcpserver

import (
	"os"
	"os/exec"
)

func setProcessGroup(*exec.Cmd) {}

func terminate(p *os.Process) {
	if p != nil {
		_ = p.Kill()
	}
}

func kill(p *os.Process) {
	if p != nil {
		_ = p.Kill()
	}
}
