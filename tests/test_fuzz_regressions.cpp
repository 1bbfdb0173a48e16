// Every input a fuzz target of tests/fuzz once crashed on, kept in
// tests/data/fuzz-regressions/<target>/, is now refused with a sparq::Error
// (any other exception, or a crash, fails the test).
#include <filesystem>
#include <functional>
#include <map>

#include "sparq/model/config.h"
#include "sparq/eval/eval.h"
#include "sparq/io/safetensors.h"
#include "sparq/tokenizer/tokenizer.h"
#include "test_util.h"

using namespace sparq;
using namespace sparq::test;
namespace fs = std::filesystem;

TEST_CASE("fuzz regressions: each saved input gets a clean error", "[fuzz][errors]") {
  const std::map<std::string, std::function<void(const std::string&)>> entry = {
      {"fuzz_config", [](const std::string& s) { ModelConfig::from_json_text(s); }},
      {"fuzz_tokenizer_json", [](const std::string& s) { Tokenizer::from_json_text(s); }},
      {"fuzz_batch_line", [](const std::string& s) { parse_batch_line(s, "/nonexistent-sparq-fuzz"); }},
      {"fuzz_safetensors",
       [](const std::string& s) {
         SafetensorsFile::parse(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "regression");
       }},
  };
  const fs::path root = fs::path(data_dir()) / "fuzz-regressions";
  int n = 0;
  for (const auto& dir : fs::directory_iterator(root)) {
    const std::string target = dir.path().filename().string();
    INFO("target " << target);
    REQUIRE(entry.count(target) == 1);
    for (const auto& f : fs::directory_iterator(dir.path())) {
      INFO("input " << f.path().string());
      const std::string msg = error_of([&] { entry.at(target)(read_text(f.path().string())); });
      CHECK(msg.find('\n') == std::string::npos);
      ++n;
    }
  }
  CHECK(n > 0);
}
