//go:build !unix

package registry

import (
	"io/fs"
	"os"
	"os/exec"
	"time"
)

func setProcessGroup(*exec.Cmd) {}

func signalGroup(cmd *exec.Cmd, _ bool) { _ = cmd.Process.Kill() }

func maxRSS(*os.ProcessState) int64 { return 0 }

func allocated(info fs.FileInfo) int64 { return info.Size() }

func procCPU(int) time.Duration { return 0 }

func processCPU() time.Duration { return 0 }
