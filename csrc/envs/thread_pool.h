// A fixed set of worker threads that run one batch of indexed jobs at a time, handing out job
// indices from a shared counter (a dynamic queue: a worker that finishes early takes the next).
// Idle threads spin briefly before sleeping, so back-to-back batches (one per env step) do not
// pay a futex wake-up each; a sleeping pool costs no CPU. Run waits for the batch's jobs, not for
// the workers: a worker the OS has not scheduled yet cannot stall a step (on a busy machine the
// caller simply runs more of the jobs itself).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mtrl {

class ThreadPool {
 public:
  // Starts num_threads - 1 workers; the calling thread works too during Run.
  explicit ThreadPool(int num_threads);
  // Joins the workers.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs job(i) for i in [0, num_jobs), in increasing order of claim, and waits for all of them.
  // The first exception a job throws is rethrown here after every job has finished.
  // Thread-safety: call from one thread at a time.
  void Run(int num_jobs, const std::function<void(int)>& job);

 private:
  // One Run's jobs. Kept alive by shared ownership, so a worker that wakes after the batch is
  // finished only finds no job left to claim (and never touches the caller's job function).
  struct Batch {
    const std::function<void(int)>* job;
    int num_jobs;
    std::atomic<int> next{0};
    std::atomic<int> done{0};
    std::exception_ptr error;  // guarded by ThreadPool::mu_
  };

  void WorkerLoop();
  void Work(Batch& batch);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;               // guarded by mu_
  std::shared_ptr<Batch> current_;  // guarded by mu_
};

}  // namespace mtrl
