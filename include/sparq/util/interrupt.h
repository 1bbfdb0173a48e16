// Ctrl-C during a long run. While an InterruptGuard lives, the first SIGINT
// only sets a flag that generation and the engine poll between forward steps:
// they stop, keeping what is finished, so the caller can still print the
// statistics so far. A second SIGINT exits at once with status 130.
#pragma once

namespace sparq {

class InterruptGuard {
 public:
  InterruptGuard();  // installs the handler and clears the flag
  ~InterruptGuard();  // restores the previous handler
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
};

// True once SIGINT arrived under a guard.
bool interrupted();

// The exit status of a run stopped by SIGINT (128 + SIGINT, as shells report it).
constexpr int kInterruptedExit = 130;

}  // namespace sparq
