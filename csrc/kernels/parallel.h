// Threads for the CPU kernels: split [0, n) into chunks and run them on the calling thread plus up
// to num_threads - 1 workers.
//
// Where the compiler has OpenMP (MTRL_WITH_OPENMP), the chunks run on an OpenMP team. PyTorch's CPU
// ops use libgomp too and a process loads one libgomp.so.1 (mtrl imports torch before the core), so
// the kernels use the same worker threads as the matmuls around them. A second pool on the same
// cores measured 2x slower per kernel inside a training update: its workers and torch's spinning
// OpenMP workers preempt each other. libgomp's team does not survive fork(), so a forked child runs
// the kernels on its calling thread alone. Entering an OpenMP region and the barrier that ends it
// both wait for every team thread, also one the OS has not scheduled (another process holds its
// core): after such a stall at either end the next 64 calls run on the calling thread alone
// (doubling, up to 8192, while stalls follow one another), as with the pool below. The caller
// claims chunks from the front and the other team threads from the back (as in the pool), so each
// thread keeps the same rows from call to call. Calls from inside an OpenMP parallel region use
// the pool.
//
// Without OpenMP, a small persistent worker pool (below) does the same job.
// Why a pool and not std::thread per call: spawning costs tens of microseconds and allocates, which
// is the whole budget of a TD-target call. The pool is created on first use and grows to the largest
// thread count ever requested (a one-time allocation); after a job a worker polls for the next one
// for 0.3 ms (waking a sleeping thread costs tens of microseconds on a VM), then sleeps on a
// condition variable.
// After fork() the child starts with a fresh pool (the parent's workers do not exist there).
//
// On an oversubscribed machine a worker can be preempted in the middle of a chunk and the caller
// then waits for it (milliseconds); after such a stall the next 64 calls run on the calling thread
// alone (see kStallSlack in parallel.cc).
//
// Thread safety: ParallelFor may be called from several threads; one call uses the workers at a
// time and a concurrent call simply runs all its chunks on its own thread. Chunk boundaries depend
// only on n and the requested chunk count, and each chunk must write disjoint outputs, so results
// do not depend on scheduling.
#pragma once

#include <cstdint>

namespace mtrl {

// fn(ctx, begin, end) processes rows [begin, end). It must not throw.
using ChunkFn = void (*)(void* ctx, int64_t begin, int64_t end);

// Runs fn over [0, n) in contiguous chunks of at least min_rows_per_chunk rows, using at most
// num_threads threads in total (num_threads <= 1 or a small n: everything on the calling thread).
void ParallelFor(int64_t n, int num_threads, int64_t min_rows_per_chunk, ChunkFn fn, void* ctx);

}  // namespace mtrl
