#include "sparq/util/interrupt.h"

#include <unistd.h>

#include <csignal>

namespace sparq {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;
struct sigaction g_previous {};

void on_sigint(int) {
  if (g_interrupted) _exit(kInterruptedExit);  // only async-signal-safe calls here
  g_interrupted = 1;
  constexpr char msg[] = "\nsparq-run: interrupted, stopping (Ctrl-C again to quit now)\n";
  [[maybe_unused]] const ssize_t n = write(STDERR_FILENO, msg, sizeof msg - 1);
}

}  // namespace

InterruptGuard::InterruptGuard() {
  g_interrupted = 0;
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sa.sa_flags = SA_RESTART;  // writes of finished results must not fail with EINTR
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &g_previous);
  // A job started with SIGINT ignored (as `cmd &` in a script) keeps ignoring it.
  if (g_previous.sa_handler == SIG_IGN) sigaction(SIGINT, &g_previous, nullptr);
}

InterruptGuard::~InterruptGuard() { sigaction(SIGINT, &g_previous, nullptr); }

bool interrupted() { return g_interrupted != 0; }

}  // namespace sparq
