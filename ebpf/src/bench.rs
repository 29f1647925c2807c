//! Source rotation for the benchmark entry points. The agent sizes the table
//! to one entry; only the benchmark loads it with many sources.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use tierguard_common::maps::BENCH_SOURCES_CAPACITY;

/// Source addresses to rotate through (IPv4 in the first four bytes).
#[map(name = "TG_BENCH_SOURCES")]
static BENCH_SOURCES: Array<[u8; 16]> = Array::with_max_entries(BENCH_SOURCES_CAPACITY, 0);

/// Per-CPU position in the rotation.
#[map(name = "TG_BENCH_CURSOR")]
static BENCH_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The next source of the rotation; `None` only if a map cannot be read
/// (never, for arrays in range), and then the caller passes the packet
/// untouched: a made-up address would be a second path through the whole
/// program for the verifier to walk.
#[inline(always)]
pub fn next_source() -> Option<[u8; 16]> {
    next_source_and_round().map(|(s, _)| s)
}

/// The next source, and how many times the rotation went round before it:
/// a port that changes with every round makes every (source, port) pair new
/// for 65,536 rounds.
#[inline(always)]
pub fn next_source_and_round() -> Option<([u8; 16], u16)> {
    let cursor = BENCH_CURSOR.get_ptr_mut(0)?;
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    let i = unsafe {
        let i = *cursor;
        *cursor = i.wrapping_add(1);
        i
    };
    let source = BENCH_SOURCES.get(i % BENCH_SOURCES_CAPACITY).copied()?;
    Some((source, (i / BENCH_SOURCES_CAPACITY) as u16))
}
