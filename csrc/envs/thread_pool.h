// A fixed set of worker threads that run one batch of indexed jobs at a time. A batch comes as one
// list of jobs per thread (list 0 for the calling thread, list t for worker t): each thread works
// its own list front to back, then takes the last unclaimed job of another list (work stealing).
// Keeping a job on the same thread from batch to batch keeps its data in that core's caches;
// stealing from the back (the cheapest jobs when lists are ordered by decreasing cost) evens out
// the finishing times. Idle threads spin briefly before sleeping, so back-to-back batches (one per
// env step) do not pay a futex wake-up each; a sleeping pool costs no CPU. Run waits for the
// batch's jobs, not for the workers: a worker the OS has not scheduled yet cannot stall a step
// (on a busy machine the caller simply steals its jobs). In a fork()ed child, which has none of
// the workers, Run runs every job on the calling thread; destroy a pool with Abandon, which leaks
// it in such a child (its destructor would wait for the parent's workers forever).
#pragma once

#include <sys/types.h>

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
  // Joins the workers. Must not run in a fork()ed child: see Abandon.
  ~ThreadPool();
  // Destroys `pool`, or leaks it when called in a fork()ed child of its creator.
  static void Abandon(std::unique_ptr<ThreadPool> pool);
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs job(i) for every i in `jobs` and waits for all of them. Thread t owns the entries
  // jobs[offsets[t], offsets[t + 1]) (offsets has num_threads() + 1 entries, non-decreasing,
  // offsets[0] = 0, offsets.back() = jobs.size()). The first exception a job throws is rethrown
  // here after every job has finished. Throws std::invalid_argument on malformed offsets.
  // Thread-safety: call from one thread at a time.
  void Run(const std::vector<int>& jobs, const std::vector<int>& offsets,
           const std::function<void(int)>& job);
  // Runs job(i) for i in [0, num_jobs): the caller takes them in increasing order, idle workers
  // steal from the end.
  void Run(int num_jobs, const std::function<void(int)>& job);

 private:
  // The unclaimed part [front, back) of one thread's list, packed into one word so that the
  // owner (taking the front) and thieves (taking the back) claim with one compare-exchange.
  struct alignas(64) Range {
    std::atomic<uint64_t> bounds{0};
  };
  // One Run's jobs. Kept alive by shared ownership, so a worker that wakes after the batch is
  // finished only finds no job left to claim (and never touches the caller's job function).
  struct Batch {
    const std::function<void(int)>* job = nullptr;
    std::vector<int> jobs;
    std::unique_ptr<Range[]> ranges;  // one per thread
    int num_lists = 0;
    int num_jobs = 0;
    std::atomic<int> done{0};
    std::exception_ptr error;  // guarded by ThreadPool::mu_
  };

  void WorkerLoop(int self);
  void Work(Batch& batch, int self);
  void RunBatch(const std::shared_ptr<Batch>& batch);
  bool InForkedChild() const;
  const pid_t owner_pid_;  // the process whose threads the workers are

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;               // guarded by mu_
  std::shared_ptr<Batch> current_;  // guarded by mu_
};

}  // namespace mtrl
