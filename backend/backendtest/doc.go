// Package backendtest is the conformance suite every backend.Store runs,
// plus the tools that go with it: a fault-injecting Store (Faulty) for
// testing decorators and callers against transient failures, a seeded data
// generator, and a throughput benchmark (Bench).
//
// A backend's test calls Run with a constructor that returns an empty store:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, func(t *testing.T) backend.Store { return newEmptyStore(t) })
//	}
//
// One suite for every backend keeps the contract written in package backend
// honest: if the in-memory fake passes and the real store passes, tests of
// other packages that use the fake say something about production.
package backendtest
