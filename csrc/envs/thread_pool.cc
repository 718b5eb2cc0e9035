// Implementation of ThreadPool (see thread_pool.h).
#include "envs/thread_pool.h"

#include <unistd.h>

#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MTRL_CPU_RELAX() _mm_pause()
#else
#define MTRL_CPU_RELAX() std::this_thread::yield()
#endif

namespace mtrl {
namespace {

constexpr int kSpinIterations = 1000;  // a few tens of microseconds of polling, then sleep

uint64_t Pack(uint32_t front, uint32_t back) { return (uint64_t{front} << 32) | back; }

// Claims the front (owner) or back (thief) job index of a range; -1 when it is empty.
int Claim(std::atomic<uint64_t>& bounds, bool front) {
  uint64_t v = bounds.load(std::memory_order_acquire);
  while (true) {
    const uint32_t f = static_cast<uint32_t>(v >> 32), b = static_cast<uint32_t>(v);
    if (f >= b) return -1;
    const uint64_t next = front ? Pack(f + 1, b) : Pack(f, b - 1);
    if (bounds.compare_exchange_weak(v, next, std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
      return static_cast<int>(front ? f : b - 1);
    }
  }
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) : owner_pid_(getpid()) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

bool ThreadPool::InForkedChild() const { return getpid() != owner_pid_; }

void ThreadPool::Abandon(std::unique_ptr<ThreadPool> pool) {
  if (pool != nullptr && pool->InForkedChild()) {
    // Neither join nor detach works on the parent's workers here, and destroying the condition
    // variables they sleep on blocks forever: leak the pool instead (a few hundred bytes).
    pool.release();
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::Work(Batch& batch, int self) {
  const int lists = batch.num_lists;
  // Own list first, then the others' backs, nearest thread first.
  for (int step = 0; step < lists; ++step) {
    const int t = (self + step) % lists;
    const bool own = step == 0;
    for (int pos = Claim(batch.ranges[t].bounds, own); pos >= 0;
         pos = Claim(batch.ranges[t].bounds, own)) {
      try {
        (*batch.job)(batch.jobs[pos]);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!batch.error) batch.error = std::current_exception();
      }
      if (batch.done.fetch_add(1, std::memory_order_acq_rel) + 1 == batch.num_jobs) {
        std::lock_guard<std::mutex> lock(mu_);  // pairs with the caller's predicate wait
        done_cv_.notify_one();
      }
    }
  }
}

void ThreadPool::WorkerLoop(int self) {
  uint64_t seen = 0;
  while (true) {
    for (int spin = 0; spin < kSpinIterations &&
                       generation_.load(std::memory_order_acquire) == seen; ++spin) {
      MTRL_CPU_RELAX();
    }
    std::shared_ptr<Batch> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      if (stop_) return;
      seen = generation_.load(std::memory_order_acquire);
      batch = current_;
    }
    if (batch) Work(*batch, self);
  }
}

void ThreadPool::Run(const std::vector<int>& jobs, const std::vector<int>& offsets,
                     const std::function<void(int)>& job) {
  const int lists = num_threads();
  if (static_cast<int>(offsets.size()) != lists + 1 || offsets.front() != 0 ||
      offsets.back() != static_cast<int>(jobs.size())) {
    throw std::invalid_argument("thread pool: offsets must have num_threads + 1 = " +
                                std::to_string(lists + 1) + " entries from 0 to " +
                                std::to_string(jobs.size()));
  }
  for (int t = 0; t < lists; ++t) {
    if (offsets[t] > offsets[t + 1]) {
      throw std::invalid_argument("thread pool: offsets must be non-decreasing");
    }
  }
  if (jobs.empty()) return;
  if (InForkedChild()) {  // no workers here, and mu_ may have been copied locked
    std::exception_ptr error;
    for (int j : jobs) {
      try {
        job(j);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
  auto batch = std::make_shared<Batch>();
  batch->job = &job;
  batch->jobs = jobs;
  batch->num_lists = lists;
  batch->num_jobs = static_cast<int>(jobs.size());
  batch->ranges = std::make_unique<Range[]>(lists);
  for (int t = 0; t < lists; ++t) {
    batch->ranges[t].bounds.store(Pack(offsets[t], offsets[t + 1]), std::memory_order_relaxed);
  }
  RunBatch(batch);
}

void ThreadPool::Run(int num_jobs, const std::function<void(int)>& job) {
  if (num_jobs <= 0) return;
  std::vector<int> jobs(num_jobs);
  for (int i = 0; i < num_jobs; ++i) jobs[i] = i;
  std::vector<int> offsets(num_threads() + 1, num_jobs);
  offsets[0] = 0;
  Run(jobs, offsets, job);
}

void ThreadPool::RunBatch(const std::shared_ptr<Batch>& batch) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    current_ = batch;
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  Work(*batch, 0);
  const int num_jobs = batch->num_jobs;
  for (int spin = 0; spin < kSpinIterations &&
                     batch->done.load(std::memory_order_acquire) != num_jobs; ++spin) {
    MTRL_CPU_RELAX();
  }
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return batch->done.load(std::memory_order_acquire) == num_jobs; });
    error = batch->error;
    current_.reset();
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace mtrl
