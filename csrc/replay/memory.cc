#include "replay/memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

namespace mtrl {

uint64_t AvailableMemoryBytes() {
  // Some VMs (a Firecracker guest, for one) report "MemAvailable: 0 kB" while the process runs
  // fine: a zero reading is treated like a missing line, not as a full machine.
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream fields(line.substr(13));
      uint64_t kib = 0;
      if (fields >> kib && kib > 0) return kib * 1024;
      break;
    }
  }
  const long pages = sysconf(_SC_AVPHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_size > 0) return static_cast<uint64_t>(pages) * page_size;
  return UINT64_MAX;  // unknown: do not refuse
}

std::string NoFitMessage(uint64_t nbytes, uint64_t available, const std::string& what) {
  return what + " needs " + std::to_string(nbytes) + " bytes but this machine has only " +
         std::to_string(available) + " bytes available (MemAvailable)";
}

PageBuffer::PageBuffer(size_t nbytes) : nbytes_(nbytes) {
  if (nbytes == 0) return;
  void* p = mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    nbytes_ = 0;
    throw OutOfMemoryError("could not map " + std::to_string(nbytes) +
                           " bytes: " + std::strerror(errno));
  }
#ifdef MADV_HUGEPAGE
  if (nbytes >= (size_t{2} << 20)) madvise(p, nbytes, MADV_HUGEPAGE);  // advisory only
#endif
  data_ = p;
}

PageBuffer::~PageBuffer() { Release(); }

PageBuffer::PageBuffer(PageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), nbytes_(std::exchange(other.nbytes_, 0)) {}

PageBuffer& PageBuffer::operator=(PageBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    nbytes_ = std::exchange(other.nbytes_, 0);
  }
  return *this;
}

void PageBuffer::Release() {
  if (data_ != nullptr) munmap(data_, nbytes_);
  data_ = nullptr;
  nbytes_ = 0;
}

}  // namespace mtrl
