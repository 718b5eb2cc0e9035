// Large zero-initialised allocations for the replay buffer, and the fit-in-memory check it
// shares with the env pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace mtrl {

// Thrown when a replay allocation cannot fit in this machine's memory (-> ReplayMemoryError).
class OutOfMemoryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bytes the kernel says can be allocated without swapping: /proc/meminfo MemAvailable when it
// reads above zero, else sysconf(_SC_AVPHYS_PAGES) * page size, else unknown (UINT64_MAX). Thread-safe (reads the file each call).
uint64_t AvailableMemoryBytes();

// "<what> needs <nbytes> bytes but this machine has only <available> bytes available".
std::string NoFitMessage(uint64_t nbytes, uint64_t available, const std::string& what);

// Throws Error (a component's own MemoryError type; the replay buffer's by default) naming
// `what` if `nbytes` exceeds AvailableMemoryBytes().
template <typename Error = OutOfMemoryError>
void CheckFitsInMemory(uint64_t nbytes, const std::string& what) {
  const uint64_t available = AvailableMemoryBytes();
  if (nbytes > available) throw Error(NoFitMessage(nbytes, available, what));
}

// Page-aligned, zero-filled anonymous memory (mmap). Blocks of 2 MiB and more are advised to
// use transparent huge pages, which cuts TLB misses on the random-row gathers of sampling.
// Pages are committed on first touch. Move-only; not thread-safe (owned by one buffer).
class PageBuffer {
 public:
  PageBuffer() = default;
  explicit PageBuffer(size_t nbytes);
  ~PageBuffer();
  PageBuffer(PageBuffer&& other) noexcept;
  PageBuffer& operator=(PageBuffer&& other) noexcept;
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void Release();
  void* data_ = nullptr;
  size_t nbytes_ = 0;
};

}  // namespace mtrl
