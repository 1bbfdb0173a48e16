// Ctrl-C (SIGINT) stops a run cleanly: a batch keeps every finished result as
// a whole line, prints the statistics so far and exits 130, and --resume then
// completes it without repeating or losing an id; generation stops and prints
// its timings.
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_run.h"

using namespace sparq::test;

namespace {

std::string small_model() { return shared_dir() + "/models/stories260K-hf"; }

size_t count_lines(const std::string& path) {
  std::ifstream f(path);
  size_t n = 0;
  for (std::string line; std::getline(f, line);) ++n;
  return n;
}

}  // namespace

TEST_CASE("SIGINT during --batch keeps whole result lines; --resume finishes the rest", "[cli][signal]") {
  SPARQ_REQUIRE_SHARED(small_model());
  const TempDir dir;
  const int n = 200;
  std::string lines;
  for (int i = 0; i < n; ++i)
    lines += R"({"id": "l)" + std::to_string(i) + R"(", "prompt": "Once upon a time", "n_predict": 24})" "\n";
  const std::string batch = dir.write("b.jsonl", lines);
  const std::string out = (dir.path / "out.jsonl").string();
  const std::vector<std::string> args = {"-m", small_model(), "--batch", batch, "--out", out, "--parallel", "2",
                                         "-c", "64", "--temp", "0", "-t", "1", "--quiet"};
  {
    Background run(args);
    REQUIRE(run.wait_for([&] { return count_lines(out) >= 2; }, 120));
    run.signal_it(SIGINT);
    const int code = run.exit_code(60);
    INFO("stderr: " << run.err());
    REQUIRE(code == 130);
    CHECK(run.err().find("interrupted") != std::string::npos);
    CHECK(run.err().find("| setting | task |") != std::string::npos);  // the statistics so far
  }
  const std::string partial = read_text(out);
  REQUIRE(!partial.empty());
  CHECK(partial.back() == '\n');
  const size_t done = count_lines(out);
  CHECK(done < size_t(n));
  {
    std::istringstream in(partial);
    for (std::string line; std::getline(in, line);) REQUIRE_NOTHROW(nlohmann::json::parse(line));
  }

  // As if killed mid-write: half a line at the end, which --resume drops.
  { std::ofstream(out, std::ios::app) << R"({"id": "l199", "setting": "sp)"; }
  const Result r = run("-m " + quote(small_model()) + " --batch " + quote(batch) + " --out " + quote(out) +
                       " --resume --parallel 2 -c 64 --temp 0 --quiet");
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  std::map<std::string, int> seen;
  std::ifstream f(out);
  for (std::string line; std::getline(f, line);) seen[nlohmann::json::parse(line)["id"].get<std::string>()]++;
  CHECK(seen.size() == size_t(n));
  for (const auto& [id, count] : seen) CHECK(count == 1);
}

TEST_CASE("SIGINT during generation stops it and prints the timings", "[cli][signal]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  // -n -1 --ignore-eos would run for minutes, to context full; SIGINT comes at the first step.
  Background run({"-m", model_dir(), "-p", "Once upon a time", "-n", "-1", "--ignore-eos", "-c", "4096", "--verbose"});
  REQUIRE(run.wait_for([&] { return run.err().find("S=") != std::string::npos || !run.out().empty(); }, 120));
  run.signal_it(SIGINT);
  const int code = run.exit_code(60);
  INFO("stderr: " << run.err());
  REQUIRE(code == 130);
  CHECK(run.err().find("eval time") != std::string::npos);
  CHECK(run.err().find("stop: stopped") != std::string::npos);
}

TEST_CASE("a second SIGINT exits at once", "[cli][signal]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  Background run({"-m", model_dir(), "-p", "Once upon a time", "-n", "-1", "--ignore-eos", "-c", "4096"});
  REQUIRE(run.wait_for([&] { return !run.out().empty(); }, 120));
  run.signal_it(SIGINT);
  run.signal_it(SIGINT);
  CHECK(run.exit_code(60) == 130);
}
