// Helpers shared by the tests: where ../shared is, and skipping when it is absent.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "sparq/util/common.h"

namespace sparq::test {

inline std::string shared_dir() { return SPARQ_SHARED_DIR; }
inline std::string data_dir() { return SPARQ_TEST_DATA_DIR; }

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Everything written to f so far.
inline std::string read_back(std::FILE* f) {
  std::rewind(f);
  std::string text;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  return text;
}

// What f(FILE*) writes to a temporary file.
template <class F>
std::string output_of(F&& f) {
  std::FILE* tmp = std::tmpfile();
  REQUIRE(tmp);
  f(tmp);
  const std::string text = read_back(tmp);
  std::fclose(tmp);
  return text;
}

// The message of the sparq::Error that f throws; fails the test when f
// returns normally (other exception types propagate and fail it too).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const sparq::Error& e) {
    return e.what();
  }
  FAIL("no sparq::Error was thrown");
  return {};
}

// A fresh directory under the system temp dir, removed with its contents
// (each test case gets its own, so ctest may run them in parallel).
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sparq-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) FAIL("mkdtemp failed for " << tmpl);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // Writes bytes to name inside the directory and returns the file's path.
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::filesystem::path p = path / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }
};

// Safetensors images for tests (host byte order, little-endian).
template <class T>
inline std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// The 8-byte little-endian length, the header text, the data area.
inline std::string with_header(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

struct Raw {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// A well-formed image with the tensors laid out in the given order; `pad`
// trailing spaces after the JSON shift the data area off 8-byte alignment.
inline std::string image(const std::vector<Raw>& ts, const nlohmann::json& metadata = nullptr, size_t pad = 0) {
  nlohmann::json h = nlohmann::json::object();
  std::string data;
  for (const Raw& t : ts) {
    h[t.name] = {{"dtype", t.dtype},
                 {"shape", t.shape},
                 {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.is_null()) h["__metadata__"] = metadata;
  return with_header(h.dump() + std::string(pad, ' '), data);
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
