// Implementation of ThreadPool (see thread_pool.h).
#include "envs/thread_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MTRL_CPU_RELAX() _mm_pause()
#else
#define MTRL_CPU_RELAX() std::this_thread::yield()
#endif

namespace mtrl {
namespace {
constexpr int kSpinIterations = 1000;  // a few tens of microseconds of polling, then sleep
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
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

void ThreadPool::Work(Batch& batch) {
  for (int i = batch.next.fetch_add(1); i < batch.num_jobs; i = batch.next.fetch_add(1)) {
    try {
      (*batch.job)(i);
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

void ThreadPool::WorkerLoop() {
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
    if (batch) Work(*batch);
  }
}

void ThreadPool::Run(int num_jobs, const std::function<void(int)>& job) {
  if (num_jobs <= 0) return;
  auto batch = std::make_shared<Batch>();
  batch->job = &job;
  batch->num_jobs = num_jobs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current_ = batch;
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  Work(*batch);
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
