// Package examples tests what the repository shows users: the custom
// operator worker, built as the separate module a user's worker is, and
// the Go code in the README.
package examples

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// goCmd runs the go command in dir. Offline, every module comes from the
// module cache, which building this repository filled; checking that a
// module is tidy reads the go.mod of every module in its graph (test
// dependencies of dependencies too), which building does not fetch, so
// that check may ask the module proxy.
func goCmd(t *testing.T, dir, goflags string, offline bool, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS="+goflags)
	if offline {
		cmd.Env = append(cmd.Env, "GOPROXY=off")
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// examples/customop is a module of its own that requires
// github.com/flotilla-io/flotilla (replaced by this checkout), as a user's
// worker does: its go.mod and go.sum are tidy, and it builds and vets.
func TestCustomOperatorBuildsAsItsOwnModule(t *testing.T) {
	const fix = "fix with: cd examples/customop && cp ../../go.sum . && GOFLAGS=-mod=mod go mod tidy"
	if out, err := goCmd(t, "customop", "-mod=mod", false, "mod", "tidy", "-diff"); err != nil {
		t.Fatalf("examples/customop/go.mod or go.sum is not tidy (%v); %s\n%s", err, fix, out)
	}
	for _, args := range [][]string{{"build", "-o", filepath.Join(t.TempDir(), "customop"), "."}, {"vet", "."}} {
		if out, err := goCmd(t, "customop", "-mod=readonly -buildvcs=false", true, args...); err != nil {
			t.Fatalf("go %s in examples/customop: %v; %s\n%s", strings.Join(args, " "), err, fix, out)
		}
	}
}

// Every Go block of the README is a complete program that compiles
// against this module's dependencies.
func TestREADMEGoCodeCompiles(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllSubmatch(readme, -1)
	if len(blocks) == 0 {
		t.Fatal("no Go code in README.md")
	}
	for i, b := range blocks {
		code := string(b[1])
		if !strings.HasPrefix(code, "package main\n") {
			t.Errorf("README Go block %d is not a complete program (package main ...):\n%s", i+1, code)
			continue
		}
		file := filepath.Join(t.TempDir(), "main.go")
		if err := os.WriteFile(file, b[1], 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := goCmd(t, "..", "-mod=readonly", true, "vet", file); err != nil {
			t.Errorf("README Go block %d does not compile: %v\n%s\n%s", i+1, err, out, code)
		}
	}
}
