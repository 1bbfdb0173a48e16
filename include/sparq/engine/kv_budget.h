// How many KV caches fit in memory, decided before they are made: untouched
// allocations succeed and the process is killed later, when the pages are
// written, so a context or --parallel too large must be refused up front.
#pragma once
#include <cstddef>
#include <span>

#include "sparq/kernels/kv_cache.h"

namespace sparq {

// MemAvailable of /proc/meminfo in bytes; 0 when it cannot be read.
size_t available_memory();

// Throws Error naming the context size and the GiB needed (the transposed K
// copy included) when n sequences' KV caches of this shape would take more
// than 80% of `available` bytes (0: unknown, no check).
void check_kv_fits(const KVShape& one_sequence, int n, size_t available);
// The same for sequences of different shapes, one entry each.
void check_kv_fits(std::span<const KVShape> sequences, size_t available);

// The default context of one sequence: the trained one (one_sequence's
// capacity), halved while its KV cache would not fit in `available` bytes as
// check_kv_fits counts them (0: unknown, the trained one), down to 1.
int default_context(const KVShape& at_trained, size_t available);

// As many sequences as fit in the memory available now (at most `cap`);
// throws as check_kv_fits when not even one does.
int parallel_that_fits(const KVShape& one_sequence, int cap);
// How many jobs fit (at most `cap`) when each holds caches of these shapes.
int parallel_that_fits(std::span<const KVShape> one_job, int cap);

}  // namespace sparq
