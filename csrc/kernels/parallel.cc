#include "kernels/parallel.h"

#if defined(MTRL_WITH_OPENMP)
#include <omp.h>
#endif

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace mtrl {
namespace {

// Spin budgets. A worker that finished a job polls for the next one this long before it sleeps on
// the condition variable: on a virtual machine waking a sleeping thread (futex + inter-processor
// interrupt to a halted vCPU) takes tens of microseconds, as long as a whole TD-target call, while
// back-to-back kernel calls (target, then loss) are a few tens of microseconds apart. The caller
// polls for the last chunks a bounded time too, then sleeps (a preempted worker must not make the
// caller burn its core). Both are short next to OpenMP's default spin (~0.3 ms in libgomp).
constexpr auto kWorkerSpin = std::chrono::microseconds(300);
constexpr auto kCallerSpin = std::chrono::microseconds(200);
// Stall guard: when the caller waits for the workers more than its own chunks took plus this slack,
// a worker was preempted mid-chunk (the machine is oversubscribed: every core runs other work), and
// the next kBackoffCalls calls run on the calling thread alone before the workers are tried again;
// each further stall in a row doubles that, up to kMaxBackoffCalls (a machine that stays busy costs
// one stall per thousands of calls), and a call without a stall resets it.
// Results do not depend on it (chunking never changes them).
constexpr auto kStallSlack = std::chrono::microseconds(500);
constexpr int kBackoffCalls = 64;
constexpr int kMaxBackoffCalls = 8192;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls pred() with a pause between tries for at most `budget`; true once pred() holds. With
// `yield`, every 64th try also offers the core to other runnable threads (sched_yield returns at
// once on an idle core): on a loaded machine a polling worker then does not push other processes
// onto the core of the thread that calls the kernels.
template <typename Pred>
bool SpinUntil(Pred pred, std::chrono::microseconds budget, bool yield = false) {
  const auto deadline = std::chrono::steady_clock::now() + budget;
  for (int i = 1;; ++i) {
    if (pred()) return true;
    CpuRelax();
    if ((i & 63) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return pred();
      if (yield) sched_yield();
    }
  }
}

// Calls left to run on the caller alone after a stall (a worker or team thread that the OS did not
// schedule in time; see WorkerPool::Run and ParallelFor).
class Backoff {
 public:
  // After each parallel call: whether it stalled.
  void Record(bool stalled) {
    if (!stalled) {
      length_.store(kBackoffCalls, std::memory_order_relaxed);
      return;
    }
    const int length = length_.load(std::memory_order_relaxed);
    left_.store(length, std::memory_order_relaxed);
    length_.store(std::min(2 * length, kMaxBackoffCalls), std::memory_order_relaxed);
  }
  // True (and one call fewer to go) while calls should run on the caller alone.
  bool TakeOne() {
    int left = left_.load(std::memory_order_relaxed);
    while (left > 0) {
      if (left_.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) return true;
    }
    return false;
  }

 private:
  std::atomic<int> left_{0};
  std::atomic<int> length_{kBackoffCalls};
};

// Chunks are claimed through one atomic word (generation << 32 | front << 16 | back: the unclaimed
// chunks are [front, back)), so a worker that wakes late for an old generation can never claim a
// chunk of a newer one: its compare-exchange fails on the generation (its low 32 bits). The caller waits only for claimed chunks, never for sleeping workers.
// Jobs are published under mu_ (a worker copies job_ and generation_ together under it); workers
// and the caller spin briefly before sleeping (see kWorkerSpin), so back-to-back calls cost no
// system call. No wake-up is lost: a worker decides to sleep and counts itself in sleepers_ under
// mu_, and Run reads sleepers_ under mu_ after publishing.
class WorkerPool {
 public:
  void Run(int num_threads, int64_t n, int64_t num_chunks, ChunkFn fn, void* ctx) {
    std::unique_lock<std::mutex> run_lock(run_mu_, std::try_to_lock);
    if (!run_lock.owns_lock()) {  // another thread is using the workers: run inline
      fn(ctx, 0, n);
      return;
    }
    const int num_workers = num_threads - 1;
    Job job{0, n, num_chunks, fn, ctx};
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int>(workers_.size()) < num_workers) {
        const int index = static_cast<int>(workers_.size());
        workers_.emplace_back([this, index] { WorkerLoop(index); });
      }
      job.generation = ++generation_;
      job_ = job;
      active_workers_ = num_workers;
      done_.store(0);
      state_.store(job.generation << 32 | static_cast<uint64_t>(num_chunks));  // front 0, back
      published_.store(job.generation, std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) work_cv_.notify_all();
    const auto start = std::chrono::steady_clock::now();
    ClaimAndRun(job, false);
    const auto own_done = std::chrono::steady_clock::now();
    if (!SpinUntil([&] { return done_.load(std::memory_order_acquire) == num_chunks; },
                   kCallerSpin)) {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, [&] { return done_.load() == num_chunks; });
    }
    // A worker preempted in the middle of a chunk (an oversubscribed machine) makes the caller
    // wait far longer than its own share took; then the next calls run on the caller alone.
    const auto waited = std::chrono::steady_clock::now() - own_done;
    backoff_.Record(waited > (own_done - start) + kStallSlack);
  }

  // True (and one call fewer to go) while calls should skip the workers after a stall.
  bool TakeBackoff() { return backoff_.TakeOne(); }

 private:
  struct Job {
    uint64_t generation;
    int64_t n;
    int64_t num_chunks;
    ChunkFn fn;
    void* ctx;
  };

  // Claims and runs chunks of `job` until none is left: the caller from the front, workers from
  // the back, so with two threads each keeps the same rows call after call (its L2 cache stays
  // warm when the same buffers come back) and only the middle chunk moves between them.
  void ClaimAndRun(const Job& job, bool from_back) {
    uint64_t state = state_.load();
    for (;;) {
      const uint64_t front = (state >> 16) & 0xffffu, back = state & 0xffffu;
      if ((state >> 32) != (job.generation & 0xffffffffu) || front >= back) break;
      const uint64_t next = from_back ? state - 1 : state + (uint64_t{1} << 16);
      if (!state_.compare_exchange_weak(state, next)) continue;
      const int64_t chunk = static_cast<int64_t>(from_back ? back - 1 : front);
      const int64_t begin = job.n * chunk / job.num_chunks;
      const int64_t end = job.n * (chunk + 1) / job.num_chunks;
      job.fn(job.ctx, begin, end);
      if (done_.fetch_add(1) + 1 == job.num_chunks) {
        std::lock_guard<std::mutex> lock(mu_);
        done_cv_.notify_all();
      }
      state = state_.load();
    }
  }

  void WorkerLoop(int index) {
    uint64_t seen = 0;
    for (;;) {
      SpinUntil([&] { return published_.load(std::memory_order_acquire) != seen; }, kWorkerSpin,
                /*yield=*/true);
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (generation_ == seen) {
          ++sleepers_;
          work_cv_.wait(lock, [&] { return generation_ != seen; });
          --sleepers_;
        }
        seen = generation_;
        if (index >= active_workers_) continue;  // this job does not need this worker
        job = job_;
      }
      ClaimAndRun(job, true);
    }
  }

  std::mutex run_mu_;  // one Run at a time uses the workers
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::vector<std::thread> workers_;
  uint64_t generation_ = 0;  // guarded by mu_
  int active_workers_ = 0;   // guarded by mu_
  int sleepers_ = 0;         // guarded by mu_: workers waiting on work_cv_
  Job job_{0, 0, 0, nullptr, nullptr};
  std::atomic<uint64_t> published_{0};  // generation_, readable without mu_ (for spinning)
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
  Backoff backoff_;  // calls left to run on the caller alone (see Run)
};

// Deliberately leaked: joining workers during static destruction (Python finalisation) is unsafe,
// and at process exit sleeping workers hold nothing. After fork() the child gets a new pool.
WorkerPool* g_pool = nullptr;
std::once_flag g_atfork_once;

WorkerPool& Pool() {
  std::call_once(g_atfork_once, [] {
    pthread_atfork(nullptr, nullptr, [] { g_pool = nullptr; });
  });
  static std::mutex create_mu;
  std::lock_guard<std::mutex> lock(create_mu);
  if (g_pool == nullptr) g_pool = new WorkerPool();
  return *g_pool;
}

#if defined(MTRL_WITH_OPENMP)
// The unclaimed chunks [front, back) of one OpenMP call in one word (front | back << 32): the
// caller (thread 0) claims from the front and the other team threads from the back, so with two
// threads each keeps the same rows call after call and from one kernel to the next (the TD
// target's rows are still in the L2 cache of the core that reads them in the loss; measured ~5%
// less time per target + loss fwdbwd at 2 threads than one shared counter), and only the middle
// chunk moves between them.
class ChunkClaims {
 public:
  explicit ChunkClaims(int64_t num_chunks) : ends_(static_cast<uint64_t>(num_chunks) << 32) {}

  // The index of the next chunk, or -1 once none is left.
  int64_t Claim(bool from_back) {
    uint64_t state = ends_.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t front = state & 0xffffffffu, back = state >> 32;
      if (front >= back) return -1;
      const uint64_t next = from_back ? state - (uint64_t{1} << 32) : state + 1;
      if (ends_.compare_exchange_weak(state, next, std::memory_order_relaxed)) {
        return static_cast<int64_t>(from_back ? back - 1 : front);
      }
    }
  }

 private:
  std::atomic<uint64_t> ends_;
};

Backoff& OmpBackoff() {
  static Backoff backoff;
  return backoff;
}

// Set in a forked child. The handler is registered when the library loads, not at the first
// parallel call: a process whose first threaded kernel call comes after a fork (its libgomp team
// made by torch's own ops) must still know in the child (found by a fuzzing helper: the child hung
// in gomp_team_end).
std::atomic<bool> g_forked{false};
const int g_forked_handler = pthread_atfork(nullptr, nullptr, [] { g_forked.store(true); });

bool ForkedChild() { return g_forked.load(std::memory_order_relaxed); }
#endif

}  // namespace

void ParallelFor(int64_t n, int num_threads, int64_t min_rows_per_chunk, ChunkFn fn, void* ctx) {
  if (n <= 0) return;
  const int64_t min_rows = std::max<int64_t>(1, min_rows_per_chunk);
  const int64_t max_chunks = (n + min_rows - 1) / min_rows;
  const int threads = static_cast<int>(std::min<int64_t>(std::max(num_threads, 1), max_chunks));
  if (threads <= 1) {
    fn(ctx, 0, n);
    return;
  }
  // A few chunks per thread so a late-waking worker costs little (the caller takes its share).
  const int64_t num_chunks =
      std::min<int64_t>({max_chunks, 4 * static_cast<int64_t>(threads), 0xffff});  // 16-bit claims
#if defined(MTRL_WITH_OPENMP)
  if (!omp_in_parallel()) {
    // libgomp's team does not survive fork(): a forked child runs the kernels on one thread, as
    // does a call while the back-off after a stall lasts.
    if (ForkedChild() || OmpBackoff().TakeOne()) {
      fn(ctx, 0, n);
      return;
    }
    // Chunks are claimed from both ends of one range (ChunkClaims), so when a team thread starts
    // late the others take its chunks; boundaries depend only on n and num_chunks, so results do
    // not change.
    ChunkClaims claims(num_chunks);
    const auto start = std::chrono::steady_clock::now();
    auto entered = start, own_done = start;
#pragma omp parallel num_threads(threads)
    {
      const bool caller = omp_get_thread_num() == 0;
      if (caller) entered = std::chrono::steady_clock::now();
      for (int64_t c = claims.Claim(!caller); c >= 0; c = claims.Claim(!caller)) {
        fn(ctx, n * c / num_chunks, n * (c + 1) / num_chunks);
      }
      if (caller) own_done = std::chrono::steady_clock::now();
    }
    // The caller waits for a team thread that the OS has not scheduled (another process holds
    // its core) in two places: entering the region and at the barrier that ends it. After either
    // stall the next calls run on the caller alone. (Under another process's 2-thread torch loop,
    // most stalls were at the entry: left out of the check, every call took ~8 ms per region.)
    const auto waited = std::chrono::steady_clock::now() - own_done;
    OmpBackoff().Record(entered - start > kStallSlack ||
                        waited > (own_done - entered) + kStallSlack);
    return;
  }
#endif
  WorkerPool& pool = Pool();
  if (pool.TakeBackoff()) {
    fn(ctx, 0, n);
    return;
  }
  pool.Run(threads, n, num_chunks, fn, ctx);
}

}  // namespace mtrl
