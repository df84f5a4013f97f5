package auth

import (
	"fmt"
	"strings"
)

// An Action is what a scope allows. Actions are independent: write does not
// imply read, and admin implies nothing else, so that a file says exactly
// what each token may do.
type Action uint8

const (
	// Read: look up step records, pull layers, manifests and blobs.
	Read Action = iota + 1
	// Write: record steps, push layers, manifests and blobs.
	Write
	// Delete: remove step records, manifests, tags and blobs.
	Delete
	// Admin: operations on the whole cache, such as gc and reindex.
	Admin
)

// actions lists every action, in order, for loops and messages.
var actions = []Action{Read, Write, Delete, Admin}

// String returns the name used in the credentials file ("read", ...).
func (a Action) String() string {
	switch a {
	case Read:
		return "read"
	case Write:
		return "write"
	case Delete:
		return "delete"
	case Admin:
		return "admin"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// ParseAction parses an action's name as the credentials file writes it.
func ParseAction(s string) (Action, error) {
	for _, a := range actions {
		if s == a.String() {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown action %q (want read, write, delete or admin)", s)
}

// actionSet is a set of actions as bits, so that a scope's check is one AND.
type actionSet uint8

func (s actionSet) has(a Action) bool { return s&(1<<a) != 0 }

func (s *actionSet) add(a Action) { *s |= 1 << a }

// registryAction maps an action of the registry token protocol ("pull",
// "push", "delete", "*") to ours. "*" asks for everything the registry
// knows, which is every action but admin.
func registryActions(s string) []Action {
	switch s {
	case "pull":
		return []Action{Read}
	case "push":
		return []Action{Write}
	case "delete":
		return []Action{Delete}
	case "*":
		return []Action{Read, Write, Delete}
	}
	return nil
}

// registryName is the name of an action in the registry token protocol.
func (a Action) registryName() string {
	switch a {
	case Read:
		return "pull"
	case Write:
		return "push"
	case Delete:
		return "delete"
	}
	return "*"
}

// MethodAction maps an HTTP method to the action it needs on the registry:
// GET and HEAD read (pull), POST, PUT and PATCH write (push), DELETE
// deletes. ok is false for any other method.
func MethodAction(method string) (a Action, ok bool) {
	switch strings.ToUpper(method) {
	case "GET", "HEAD":
		return Read, true
	case "POST", "PUT", "PATCH":
		return Write, true
	case "DELETE":
		return Delete, true
	}
	return 0, false
}
