// Limits checked before any work starts: flags out of range, KV caches that
// cannot fit in memory, batch lines that are malformed. Each gets one error
// line and a non-zero exit (a bad batch line: its number, and the rest runs).
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli_run.h"

using namespace sparq::test;

TEST_CASE("numeric flags out of range are refused before the model loads", "[cli][errors][limits]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  const std::string m = "-m " + quote(model_dir()) + " -p hi ";
  require_one_error_line(run(m + "-b 0"), "--batch-size must be >= 1");
  require_one_error_line(run(m + "-b -4"), "--batch-size must be >= 1");
  require_one_error_line(run(m + "-c -1"), "--ctx-size must be >= 0");
  require_one_error_line(run(m + "-n -2"), "--n-predict must be >= -1");
  require_one_error_line(run(m + "-t 100000"), "--threads must be at most 1024");
  require_one_error_line(run(m + "--parallel -1"), "--parallel must be >= 0");
  require_one_error_line(run(m + "--top-k -1"), "--top-k must be >= 0");
  require_one_error_line(run(m + "--min-p 1.5"), "--min-p must be in [0, 1]");
  require_one_error_line(run(m + "--min-p -0.1"), "--min-p must be in [0, 1]");
  require_one_error_line(run(m + "--repeat-penalty 0"), "--repeat-penalty must be > 0");
  require_one_error_line(run(m + "--repeat-last-n -1"), "--repeat-last-n must be >= 0");
  require_one_error_line(run(m + "--temp nan"), "--temp");
  // --sparq-* flags are checked whatever --attention is.
  require_one_error_line(run(m + "--attention dense --sparq-k -3"), "SparQ k must be >= 0");
  require_one_error_line(run(m + "--sparq-r -1"), "SparQ r must be >= 0");
  require_one_error_line(run(m + "--sparq-local -2"), "SparQ local window");
  require_one_error_line(run(m + "--sparq-ratio -8"), "SparQ ratio must be >= 0");
  require_one_error_line(run(m + "--sparq-k-floor 0"), "SparQ k floor must be >= 1");
  require_one_error_line(run(m + "-c 99999999999"), "ctx-size");  // not an int
}

TEST_CASE("a KV cache larger than the memory available is refused up front", "[cli][errors][limits]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  const std::string m = "-m " + quote(model_dir());
  // 8 layers x 2 KV heads x 64 x 2 bytes x 3 arrays per position: ~11 TiB at 2e9 positions.
  require_one_error_line(run(m + " -p hi -c 2000000000"), "the KV cache for ctx 2000000000 needs");
  require_one_error_line(run(m + " -p hi -c 2000000000"), "(incl. transposed K)");
  const TempDir dir;
  const std::string batch = dir.write("b.jsonl", R"({"id": "a", "prompt": "hi", "n_predict": 2})" "\n");
  require_one_error_line(run(m + " --batch " + quote(batch) + " -c 200000000"), "the KV cache for ctx 200000000");
  require_one_error_line(run(m + " --batch " + quote(batch) + " -c 4096 --parallel 1000000"),
                         "the KV caches of 1000000 sequences at ctx 4096 need");
  const std::string text = dir.write("t.txt", std::string(20000, 'a'));
  require_one_error_line(run(m + " --perplexity " + quote(text) + " -c 4096 --parallel 1000000"),
                         "the KV caches of 1000000 sequences");
}

TEST_CASE("malformed batch lines are reported with their number and skipped", "[cli][eval][limits]") {
  const std::string small = shared_dir() + "/models/stories260K-hf";
  SPARQ_REQUIRE_SHARED(small);
  const TempDir dir;
  const std::string batch = dir.write("b.jsonl",
                                      "{\"id\": \"ok1\", \"prompt\": \"Once\", \"n_predict\": 2}\n"
                                      "{\"id\": \"bad\", \"prompt\": 5}\n"
                                      "not json at all\n"
                                      "\n"
                                      "{\"id\": 7, \"prompt\": \"x\", \"n_predict\": 1e999}\n"
                                      "{\"id\": \"fifo\", \"prompt_file\": \"/dev/zero\"}\n"
                                      "{\"id\": \"long\", \"prompt\": \"" + std::string(3000, 'a') + " b\"}\n"
                                      "{\"id\": \"ok2\", \"prompt\": \"Once\", \"n_predict\": 2}\n");
  const std::string out = (dir.path / "out.jsonl").string();
  const Result r = run("-m " + quote(small) + " --batch " + quote(batch) + " --out " + quote(out) + " --quiet --temp 0");
  INFO("stderr: " << r.err);
  CHECK(r.code == 3);  // some lines failed
  for (const char* where : {"b.jsonl:2: \"prompt\" must be a string", "b.jsonl:3: not valid JSON",
                            "b.jsonl:5: not valid JSON (a number is too large)",
                            "b.jsonl:6: prompt_file /dev/zero is not a regular file", "b.jsonl:7: the prompt is"})
    CHECK(r.err.find(where) != std::string::npos);
  int ok = 0, errors = 0;
  std::ifstream f(out);
  for (std::string line; std::getline(f, line);) {
    const auto j = nlohmann::json::parse(line);
    (j.contains("error") ? errors : ok)++;
  }
  CHECK(ok == 2);
  CHECK(errors == 5);
}
