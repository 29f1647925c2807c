//! Shared helpers for tierguard's kernel and end-to-end tests.
