// Package worker is flotilla's worker: slots that run tasks for the
// coordinator, after Flink's TaskExecutor.
//
// A Worker registers with the coordinator's resource manager (retrying with
// capped exponential backoff until answered, so start order never matters),
// heartbeats with a slot report, reserves slots on request and offers them
// to job masters, and runs the tasks they deploy. It enforces epoch fencing:
// messages of an older coordinator epoch are refused, and a newer epoch (or
// a new registration) stops the tasks deployed before it. See slots.go for
// the rules, docs/DESIGN.md for the protocol.
//
// A task owns one key-group range of one job. It opens or restores its
// Pebble state (statebackend), consumes its groups of the job's
// key-partitioned source stream with an ordered consumer, applies each
// event through the job's Operator exactly once (an event at or below its
// group's applied mark is skipped; state changes and the mark commit in one
// batch), publishes outputs after each commit with deterministic message ids,
// answers state queries for its groups, and takes checkpoints and savepoints
// on barriers (checkpoint.go).
//
// Operators are registered by name with Register; the built-ins are count,
// sum, latest, dedupe and window (builtin.go). A binary with operators of its
// own registers them and calls Main (see examples/customop).
package worker
