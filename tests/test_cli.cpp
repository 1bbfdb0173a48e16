// The sparq-run binary end to end: generation on the shared model, and bad
// input answered with one clear error line and a non-zero exit.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace fs = std::filesystem;
using namespace sparq::test;

namespace {

struct Result {
  int code;
  std::string out, err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

Result run(const std::string& args) {
  const fs::path dir = fs::temp_directory_path() / "sparq-cli-test";
  fs::create_directories(dir);
  // Test cases run as concurrent processes: each call gets its own files.
  static int calls = 0;
  const std::string tag = std::to_string(getpid()) + "-" + std::to_string(calls++);
  const std::string out = (dir / ("out-" + tag)).string(), err = (dir / ("err-" + tag)).string();
  const std::string cmd =
      std::string(SPARQ_RUN_BINARY) + " " + args + " >" + quote(out) + " 2>" + quote(err);
  const int status = std::system(cmd.c_str());
  Result r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_text(out), read_text(err)};
  fs::remove(out);
  fs::remove(err);
  return r;
}

std::string model_dir() { return shared_dir() + "/models/llama-27m-prose"; }

// One line on stderr, starting "error: ", containing `what`.
void require_one_error_line(const Result& r, const std::string& what) {
  INFO("stderr: " << r.err);
  REQUIRE(r.code != 0);
  REQUIRE(r.code < 128);  // an exit, not a signal
  REQUIRE(r.err.rfind("error: ", 0) == 0);
  REQUIRE(r.err.find('\n') == r.err.size() - 1);
  REQUIRE(r.err.find(what) != std::string::npos);
}

}  // namespace

TEST_CASE("greedy generation streams the golden continuation", "[cli][golden]") {
  const std::string golden_path = shared_dir() + "/golden/logits_llama-27m-prose.json";
  SPARQ_REQUIRE_SHARED(golden_path);
  const auto golden = nlohmann::json::parse(read_text(golden_path));
  const auto& p = golden["prompts"][0];
  const auto want = p["greedy_text"].get<std::string>();
  const int n = int(p["greedy_ids"].size());
  for (const char* attn : {"dense", "sparq"}) {
    const Result r = run("-m " + quote(model_dir()) + " -p " + quote(p["prompt"]) + " -n " +
                         std::to_string(n) + " --temp 0 --ignore-eos --dtype f32 --kv-type f32 --attention " + attn);
    INFO(attn << " stderr: " << r.err);
    REQUIRE(r.code == 0);
    CHECK(r.out == want + "\n");
    CHECK(r.err.find("prompt eval time") != std::string::npos);
  }
}

TEST_CASE("bad input gets one error line and a non-zero exit", "[cli][errors]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  const std::string m = "-m " + quote(model_dir());
  require_one_error_line(run(m + " -p hi --no-such-flag"), "no-such-flag");
  require_one_error_line(run(m), "prompt");
  require_one_error_line(run("-m /nonexistent/model -p hi"), "/nonexistent/model");
  require_one_error_line(run(m + " -p hi --temp -1"), "--temp");
  require_one_error_line(run(m + " -p hi --top-p 2"), "--top-p");
  require_one_error_line(run(m + " -p hi --kv-type f16"), "--kv-type");
  require_one_error_line(run(m + " -p hi --dtype int4"), "--dtype");
  require_one_error_line(run(m + " -p hi --attention nonsense"), "nonsense");
  require_one_error_line(run(m + " -p hi -t -3"), "--threads");
  require_one_error_line(run(m + " -p hi -n abc"), "n-predict");
  require_one_error_line(run(m + " -f /nonexistent/prompt.txt"), "/nonexistent/prompt.txt");
  require_one_error_line(run(m + " -c 8 -p " + quote("a prompt that is longer than eight tokens for sure")),
                         "context size");
}

TEST_CASE("SparQ at 1/8 runs end to end and fetches what the formula says", "[cli][sparq]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  // About 400 tokens of held-out text: long enough that no step falls back to dense.
  const std::string prompt = read_text(shared_dir() + "/eval/heldout.txt").substr(0, 1600);
  const fs::path dir = fs::temp_directory_path() / "sparq-cli-test";
  const std::string prompt_file = (dir / ("prompt-" + std::to_string(getpid()))).string();
  const std::string stats = (dir / ("stats-" + std::to_string(getpid()) + ".json")).string();
  {
    std::ofstream f(prompt_file);
    f << prompt;
  }
  const Result r = run("-m " + quote(model_dir()) + " -f " + quote(prompt_file) +
                       " -n 8 --temp 0 --ignore-eos --attention sparq:8 --stats-json " + quote(stats));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("KV ratio") != std::string::npos);
  const nlohmann::json j = nlohmann::json::parse(read_text(stats));
  fs::remove(prompt_file);
  fs::remove(stats);
  const nlohmann::json cfg = nlohmann::json::parse(read_text(model_dir() + "/config.json"));
  const int64_t layers = cfg["num_hidden_layers"], kv_heads = cfg["num_key_value_heads"];
  const int64_t d = cfg.contains("head_dim") ? cfg["head_dim"].get<int64_t>()
                                             : cfg["hidden_size"].get<int64_t>() / cfg["num_attention_heads"].get<int64_t>();
  REQUIRE(j["steps"].size() == 7);  // the first token comes from the prompt pass
  for (const auto& s : j["steps"]) {
    const int64_t S = s["S"];
    INFO("S " << S);
    // The README's rule for sparq:8: r = d/8, k = max(S/16, 128), bf16 elements.
    const int64_t rr = d / 8, k = std::max<int64_t>(S / 16, 128);
    const double ratio = double(S * rr + 2 * k * d) / double(2 * S * d);
    CHECK(s["dense_kv_bytes"].get<int64_t>() == layers * kv_heads * 2 * S * d * 2);
    CHECK(s["kv_bytes"].get<int64_t>() == layers * kv_heads * (S * rr + 2 * k * d) * 2);
    CHECK(double(s["kv_bytes"].get<int64_t>()) / double(s["dense_kv_bytes"].get<int64_t>()) == Approx(ratio));
  }
}
