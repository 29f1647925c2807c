#![no_std]
// The kernel programs are the binary target; this empty library lets the agent
// name the crate as a build dependency so cargo rebuilds it on changes.
