#include "sparq/util/work_team.h"

#include <linux/futex.h>
#include <omp.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace sparq {
namespace {

using Clock = std::chrono::steady_clock;

// How long a thread spins before it sleeps: an idle worker waiting for the
// next loop (a decode step's loops come microseconds apart), and the caller
// waiting for items other threads hold. Sleeping also frees the core, so the
// OS can move a held-back thread of ours onto it.
constexpr auto kIdleSpin = std::chrono::microseconds(200);
constexpr auto kDoneSpin = std::chrono::microseconds(50);

// A worker that has run this long since it last slept lets another task have
// its core (sched_yield, between items) before it claims more. The OS takes
// the core from a thread whose time slice is up; one taken mid-item leaves the
// caller waiting for that item until it runs again, a slice later. With
// `yes` beside a 2-thread decode of llama-27m-prose this took 2 threads from
// 0.87x of 1 thread's speed to 1.01-1.08x; with the core to itself the yield
// returns at once.
constexpr auto kYield = std::chrono::microseconds(300);

constexpr uint32_t kClosed = 0xffffffffu;  // a loop being set up: nothing to claim

thread_local bool t_inside = false;     // in an item, or a worker
thread_local Clock::time_point t_awake;  // a worker's last wake-up or yield

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

void futex_wait(std::atomic<uint32_t>& a, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&a), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>& a, int count) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&a), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

// Spins until done() or the budget runs out; returns done().
template <class Done>
bool spin_until(Done&& done, Clock::duration budget) {
  const auto end = Clock::now() + budget;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (Clock::now() > end) return done();
  }
}

class Team {
 public:
  static Team& get() {
    static Team team;
    return team;
  }
  ~Team();
  void run(int n, int threads, ItemFn f);

 private:
  static uint32_t gen_of(uint64_t w) { return uint32_t(w >> 32); }
  static uint32_t item_of(uint64_t w) { return uint32_t(w); }

  void grow(int workers);
  void worker(int index, uint32_t seen);
  void work(int index, uint32_t gen);

  // The current loop. word = generation << 32 | next unclaimed item, or
  // kClosed while the fields below are being set: a thread holding an old
  // word fails to claim from it once set-up has begun, so an item it claims
  // always belongs to the loop its fields describe.
  std::atomic<uint64_t> word_{0};
  std::atomic<int> n_{0}, team_{0};
  std::atomic<const ItemFn*> fn_{nullptr};
  std::atomic<uint32_t> done_{0};  // items finished; the caller sleeps on it
  std::atomic<int> caller_asleep_{0};
  std::atomic<bool> failed_{false};
  std::mutex error_mutex_;
  std::exception_ptr error_;

  std::atomic<uint32_t> epoch_{0};  // bumped per loop; idle workers sleep on it
  std::atomic<int> asleep_{0};
  std::atomic<bool> stop_{false};
  std::mutex run_mutex_;  // one loop at a time
  std::vector<std::thread> workers_;
};

Team::~Team() {
  stop_.store(true);
  epoch_.fetch_add(1);
  futex_wake(epoch_, INT_MAX);
  for (std::thread& t : workers_) t.join();
}

void Team::grow(int workers) {
  while (int(workers_.size()) < workers) {
    const int index = int(workers_.size()) + 1;
    const uint32_t seen = gen_of(word_.load());  // before the loop it is grown for
    workers_.emplace_back([this, index, seen] { worker(index, seen); });
  }
}

// Claims and runs items of loop `gen` until none are left for this thread.
void Team::work(int index, uint32_t gen) {
  uint64_t w = word_.load(std::memory_order_acquire);
  for (;;) {
    if (gen_of(w) != gen || item_of(w) == kClosed) return;
    const int n = n_.load(std::memory_order_acquire);
    if (index >= team_.load(std::memory_order_acquire) || int(item_of(w)) >= n) return;
    if (index > 0 && Clock::now() - t_awake > kYield) {
      sched_yield();
      t_awake = Clock::now();
      w = word_.load(std::memory_order_acquire);
      continue;
    }
    if (!word_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // The item is ours and unfinished, so the loop is still the caller's.
    if (!failed_.load(std::memory_order_relaxed)) {
      try {
        (*fn_.load(std::memory_order_acquire))(int(item_of(w)));
      } catch (...) {
        std::lock_guard lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == uint32_t(n) && caller_asleep_.load())
      futex_wake(done_, 1);
    w = word_.load(std::memory_order_acquire);
  }
}

void Team::worker(int index, uint32_t seen) {
  t_inside = true;
  for (;;) {
    const auto fresh = [&] { return gen_of(word_.load(std::memory_order_acquire)) != seen || stop_.load(); };
    if (!spin_until(fresh, kIdleSpin)) {
      const uint32_t e = epoch_.load();
      asleep_.fetch_add(1);
      if (!fresh()) futex_wait(epoch_, e);
      asleep_.fetch_sub(1);
      t_awake = Clock::now();
      continue;
    }
    if (stop_.load()) return;
    seen = gen_of(word_.load(std::memory_order_acquire));
    work(index, seen);
  }
}

void Team::run(int n, int threads, ItemFn f) {
  std::lock_guard lock(run_mutex_);
  grow(threads - 1);
  const uint32_t gen = gen_of(word_.load()) + 1;
  word_.store(uint64_t(gen) << 32 | kClosed, std::memory_order_relaxed);
  n_.store(n, std::memory_order_release);
  team_.store(threads, std::memory_order_release);
  fn_.store(&f, std::memory_order_release);
  done_.store(0, std::memory_order_relaxed);
  failed_.store(false, std::memory_order_relaxed);
  error_ = nullptr;
  word_.store(uint64_t(gen) << 32, std::memory_order_release);
  epoch_.fetch_add(1);
  if (asleep_.load() > 0) futex_wake(epoch_, threads - 1);

  t_inside = true;
  work(0, gen);
  t_inside = false;
  const auto finished = [&] { return done_.load(std::memory_order_acquire) == uint32_t(n); };
  if (!spin_until(finished, kDoneSpin)) {
    caller_asleep_.store(1);
    for (uint32_t d = done_.load(); d != uint32_t(n); d = done_.load()) futex_wait(done_, d);
    caller_asleep_.store(0);
  }
  if (error_) std::rethrow_exception(error_);
}

// Inside an item or an OpenMP region, loops run in place.
bool in_place() { return t_inside || omp_in_parallel(); }

}  // namespace

int team_threads() { return in_place() ? 1 : omp_get_max_threads(); }

void parallel_items(int n, int threads, ItemFn f) {
  if (n <= 0) return;
  threads = std::min(threads, n);
  if (threads <= 1 || in_place()) {
    for (int i = 0; i < n; ++i) f(i);
    return;
  }
  Team::get().run(n, threads, f);
}

}  // namespace sparq
