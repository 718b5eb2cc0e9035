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

void ThreadPool::Work() {
  for (int i = next_.fetch_add(1); i < num_jobs_; i = next_.fetch_add(1)) {
    try {
      (*job_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
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
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      if (stop_) return;
      seen = generation_.load(std::memory_order_acquire);
    }
    Work();
    if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);  // pairs with the caller's predicate wait
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::Run(int num_jobs, const std::function<void(int)>& job) {
  if (num_jobs <= 0) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &job;
    num_jobs_ = num_jobs;
    next_.store(0);
    error_ = nullptr;
    busy_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  Work();
  for (int spin = 0; spin < kSpinIterations && busy_.load(std::memory_order_acquire) != 0; ++spin) {
    MTRL_CPU_RELAX();
  }
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return busy_.load(std::memory_order_acquire) == 0; });
    error = error_;
    job_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace mtrl
