// Helpers shared by the tests: where ../shared is, and skipping when it is absent.
#pragma once
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

namespace sparq::test {

inline std::string shared_dir() { return SPARQ_SHARED_DIR; }
inline std::string data_dir() { return SPARQ_TEST_DATA_DIR; }

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace sparq::test

// Skips the rest of the test case, with the reason printed, when a file from
// ../shared is not there (CI always has it).
#define SPARQ_REQUIRE_SHARED(path)                                           \
  do {                                                                        \
    if (!std::filesystem::exists(path)) {                                     \
      WARN("skipped: " << (path) << " is absent (../shared not beside repo)"); \
      return;                                                                 \
    }                                                                         \
  } while (0)
