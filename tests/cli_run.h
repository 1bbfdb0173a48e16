// Running the sparq-run binary from tests: to completion through the shell,
// or in the background so a test can signal it.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace sparq::test {

struct Result {
  int code;
  std::string out, err;
};

inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// A file name under the temp dir unique to this process and call: ctest runs
// test cases as concurrent processes.
inline std::string temp_name(const std::string& stem) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "sparq-cli-test";
  std::filesystem::create_directories(dir);
  static int calls = 0;
  return (dir / (stem + "-" + std::to_string(getpid()) + "-" + std::to_string(calls++))).string();
}

inline Result run(const std::string& args) {
  const std::string out = temp_name("out"), err = temp_name("err");
  const std::string cmd =
      std::string(SPARQ_RUN_BINARY) + " " + args + " >" + quote(out) + " 2>" + quote(err);
  const int status = std::system(cmd.c_str());
  Result r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_text(out), read_text(err)};
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return r;
}

inline std::string model_dir() { return shared_dir() + "/models/llama-27m-prose"; }

// One line on stderr, starting "error: ", containing `what`.
inline void require_one_error_line(const Result& r, const std::string& what) {
  INFO("stderr: " << r.err);
  REQUIRE(r.code != 0);
  REQUIRE(r.code < 128);  // an exit, not a signal
  REQUIRE(r.err.rfind("error: ", 0) == 0);
  REQUIRE(r.err.find('\n') == r.err.size() - 1);
  REQUIRE(r.err.find(what) != std::string::npos);
}

// sparq-run started in the background with stdout and stderr to files and
// SIGINT at its default (a shell would start it ignored).
class Background {
 public:
  explicit Background(const std::vector<std::string>& args) : out_(temp_name("bg-out")), err_(temp_name("bg-err")) {
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      signal(SIGINT, SIG_DFL);
      dup2(open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 1);
      dup2(open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 2);
      std::vector<char*> argv{const_cast<char*>(SPARQ_RUN_BINARY)};
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(SPARQ_RUN_BINARY, argv.data());
      _exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove(out_);
    std::filesystem::remove(err_);
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  // Polls until ready() or the process exits or `seconds` pass; true when ready.
  bool wait_for(const std::function<bool()>& ready, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      if (ready()) return true;
      if (waitpid(pid_, &status_, WNOHANG) == pid_) {
        pid_ = -1;
        return ready();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  void signal_it(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }
  // Waits up to `seconds` for the exit (then kills it); the exit code, or
  // -1 for a kill by a signal or a timeout.
  int exit_code(double seconds) {
    if (pid_ > 0 && !wait_for([this] { return pid_ < 0; }, seconds)) return -1;
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
  }
  std::string out() const { return read_text(out_); }
  std::string err() const { return read_text(err_); }

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  std::string out_, err_;
};

}  // namespace sparq::test
