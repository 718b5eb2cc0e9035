#include "kernels/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace mtrl {
namespace {

// Chunks are claimed through one atomic word (generation << 32 | next chunk), so a worker that
// wakes late for an old generation can never claim a chunk of a newer one: its compare-exchange
// fails on the generation. The caller waits only for claimed chunks, never for sleeping workers.
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
      state_.store(job.generation << 32);
    }
    work_cv_.notify_all();
    ClaimAndRun(job);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return done_.load() == num_chunks; });
  }

 private:
  struct Job {
    uint64_t generation;
    int64_t n;
    int64_t num_chunks;
    ChunkFn fn;
    void* ctx;
  };

  // Claims and runs chunks of `job` until none is left.
  void ClaimAndRun(const Job& job) {
    uint64_t state = state_.load();
    for (;;) {
      const uint64_t chunk = state & 0xffffffffu;
      if ((state >> 32) != job.generation || static_cast<int64_t>(chunk) >= job.num_chunks) break;
      if (!state_.compare_exchange_weak(state, state + 1)) continue;
      const int64_t begin = job.n * static_cast<int64_t>(chunk) / job.num_chunks;
      const int64_t end = job.n * (static_cast<int64_t>(chunk) + 1) / job.num_chunks;
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
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return generation_ != seen && index < active_workers_; });
        seen = generation_;
        job = job_;
      }
      ClaimAndRun(job);
    }
  }

  std::mutex run_mu_;  // one Run at a time uses the workers
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::vector<std::thread> workers_;
  uint64_t generation_ = 0;
  int active_workers_ = 0;
  Job job_{0, 0, 0, nullptr, nullptr};
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
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
  const int64_t num_chunks = std::min<int64_t>(max_chunks, 4 * static_cast<int64_t>(threads));
  Pool().Run(threads, n, num_chunks, fn, ctx);
}

}  // namespace mtrl
