//go:build unix

package mcpserver

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcessGroup puts a stdio child in a process group of its own, so
// that stopping it also stops what it spawned (npx, node, …).
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// terminate sends SIGTERM to the child's process group.
func terminate(p *os.Process) {
	if p != nil {
		_ = syscall.Kill(-p.Pid, syscall.SIGTERM)
	}
}

// kill sends SIGKILL to the child's process group.
func kill(p *os.Process) {
	if p != nil {
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	}
}
