// Package transfer bounds the data-carrying calls a server runs at once.
// A Limiter holds a fixed number of slots, shared by every front that is
// given it (the gRPC server, the registry), and lets one client hold at
// most a share of them, so that one client, however many calls it opens,
// cannot take every slot. A call beyond the limits waits for a slot, it
// does not fail.
//
// A client is named by its network address without the port (Host). Until
// the servers authenticate clients, everything that reaches them from one
// address counts as one client: every process of one host, every client
// behind one proxy or NAT, and all loopback clients of the server's own
// host. Stalled clients are therefore not handled here but by the fronts'
// idle timeouts, which end a call that moves no data and so free its slot.
package transfer
