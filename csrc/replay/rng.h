// Xoshiro256** pseudo-random generator (Blackman & Vigna, 2018) with a saveable state.
// Seeded through SplitMix64 as its authors recommend. Small, fast and reproducible
// across platforms, so the replay sampler's stream can be saved and restored exactly.
#pragma once

#include <array>
#include <cstdint>

namespace mtrl {

class Xoshiro256 {
 public:
  using State = std::array<uint64_t, 4>;

  explicit Xoshiro256(uint64_t seed = 0) { Seed(seed); }

  void Seed(uint64_t seed) {
    uint64_t x = seed;
    for (auto& s : s_) s = SplitMix64(x);
  }

  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }

  // Uniform double in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n) for n >= 1 (Lemire's multiply-shift; bias <= n / 2^64).
  uint64_t Below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }

  const State& state() const { return s_; }
  // A state of all zeros is the one fixed point of xoshiro; callers validate before setting.
  void set_state(const State& s) { s_ = s; }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t SplitMix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  State s_{};
};

}  // namespace mtrl
