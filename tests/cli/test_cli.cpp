// The sparq-run binary end to end: generation on the shared model, and bad
// input answered with one clear error line and a non-zero exit.
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "sparq/util/cpu.h"

namespace fs = std::filesystem;
using namespace sparq;
using namespace sparq::test;

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
  require_one_error_line(run("-m " + quote(shared_dir() + "/models/stories260K-hf") + " -p hi --dtype q4_0"),
                         "intermediate_size = 172 is not a multiple of the 32-weight block");
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
  const std::string prompt_file = temp_name("prompt"), stats = temp_name("stats");
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
    // docs/evaluation.md's rule for sparq:8: r = d/8, k = max(S/16, 128), bf16 elements.
    const int64_t rr = d / 8, k = std::max<int64_t>(S / 16, 128);
    const double ratio = double(S * rr + 2 * k * d) / double(2 * S * d);
    CHECK(s["dense_kv_bytes"].get<int64_t>() == layers * kv_heads * 2 * S * d * 2);
    CHECK(s["kv_bytes"].get<int64_t>() == layers * kv_heads * (S * rr + 2 * k * d) * 2);
    CHECK(double(s["kv_bytes"].get<int64_t>()) / double(s["dense_kv_bytes"].get<int64_t>()) == Approx(ratio));
  }
}

TEST_CASE("batch: --compare writes a result per line and setting and a summary", "[cli][eval]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  const std::string out = temp_name("batch"), summary = temp_name("summary");
  const Result r = run("-m " + quote(model_dir()) + " --batch " + quote(data_dir() + "/eval_small.jsonl") +
                       " --compare dense,sparq:8,sparq:r=4,k=16 --temp 0 --out " + quote(out) +
                       " --summary-json " + quote(summary));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  std::map<std::string, std::set<std::string>> settings_of;
  std::ifstream f(out);
  for (std::string line; std::getline(f, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    REQUIRE_FALSE(j.contains("error"));
    settings_of[j["id"].get<std::string>()].insert(j["setting"].get<std::string>());
  }
  CHECK(settings_of.size() == 5);
  for (const auto& [id, s] : settings_of) CHECK(s == std::set<std::string>{"dense", "sparq:8", "sparq:r=4,k=16"});
  const nlohmann::json sj = nlohmann::json::parse(read_text(summary));
  fs::remove(out);
  fs::remove(summary);
  REQUIRE(sj["settings"].size() == 3);
  for (const auto& s : sj["settings"]) {
    INFO(s.dump());
    for (const char* task : {"generate", "score", "repeat", "match"}) CHECK(s["tasks"].contains(task));
    CHECK(s["tasks"]["score"]["n"] == 2);
    if (s["setting"] == "dense") CHECK(s["kv_ratio"] == 1.0);
    // k = 16 of prompts of 30+ tokens: fewer bytes than dense.
    if (s["setting"] == "sparq:r=4,k=16") CHECK(s["kv_ratio"].get<double>() < 1.0);
  }
}

TEST_CASE("perplexity: SparQ with r = d and k >= S agrees with dense exactly", "[cli][eval]") {
  const std::string small = shared_dir() + "/models/stories260K-hf";
  SPARQ_REQUIRE_SHARED(small);
  const std::string summary = temp_name("ppl");
  // stories260K: head size 8. f32 throughout so the two differ only by summation order.
  const Result r = run("-m " + quote(small) + " --perplexity " + quote(data_dir() + "/eval_small_prompt.txt") +
                       " -c 8 --dtype f32 --kv-type f32 --quiet --compare dense,sparq:r=8,k=1000,nofallback,sparq:r=2,k=2"
                       " --summary-json " + quote(summary));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  const nlohmann::json sj = nlohmann::json::parse(read_text(summary));
  fs::remove(summary);
  REQUIRE(sj["windows"].get<int>() >= 2);
  const auto& s = sj["settings"];
  REQUIRE(s.size() == 3);
  CHECK(s[0]["setting"] == "dense");
  CHECK(s[1]["perplexity"].get<double>() == Approx(s[0]["perplexity"].get<double>()).epsilon(1e-5));
  CHECK(s[1]["kl_vs_dense"].get<double>() < 1e-8);
  CHECK(s[1]["top1_agreement"] == 1.0);
  CHECK(s[1]["scored_tokens"] == s[0]["scored_tokens"]);
  // A real compression changes something and fetches less.
  CHECK(s[2]["kv_ratio"].get<double>() < 1.0);
  CHECK(s[2]["kl_vs_dense"].get<double>() > 0.0);
}

TEST_CASE("perplexity on a q8_0 cache also scores dense on a bf16 cache, and the KL against it", "[cli][eval][kv]") {
  const std::string model = shared_dir() + "/models/llama-27m-prose";
  SPARQ_REQUIRE_SHARED(model);
  const std::string text = temp_name("ppl-text"), summary = temp_name("ppl");
  {
    std::ofstream f(text, std::ios::binary);
    f << read_text(shared_dir() + "/eval/heldout.txt").substr(0, 3000);
  }
  // -b 6: every product on the matrix-vector kernels, whose rows do not
  // depend on the rows beside them (see the engine's mixed-type test), so the
  // reference row can equal the bf16 run's dense on every tier.
  auto settings = [&](const std::string& kv) {
    const Result r = run("-m " + quote(model) + " --perplexity " + quote(text) + " -c 64 -b 6 -t 2 --quiet --kv-type " +
                         kv + " --compare dense,sparq:r=8,k=8 --summary-json " + quote(summary));
    INFO("stderr: " << r.err);
    REQUIRE(r.code == 0);
    const nlohmann::json sj = nlohmann::json::parse(read_text(summary));
    fs::remove(summary);
    return sj["settings"];
  };
  const nlohmann::json q8 = settings("q8_0"), bf16 = settings("bf16");
  fs::remove(text);
  REQUIRE(bf16.size() == 2);
  CHECK_FALSE(bf16[0].contains("kl_vs_bf16_dense"));
  REQUIRE(q8.size() == 3);
  CHECK(q8[0]["kv_type"] == "q8_0");
  CHECK(q8[2]["setting"] == "dense, bf16 KV");
  CHECK(q8[2]["kv_type"] == "bf16");
  // The reference row is the bf16 run's dense, and q8_0 moves dense a little.
  CHECK(q8[2]["perplexity"].get<double>() == Approx(bf16[0]["perplexity"].get<double>()).epsilon(1e-6));
  const double kl_dense = q8[0]["kl_vs_bf16_dense"].get<double>();
  CHECK(kl_dense > 0.0);
  CHECK(kl_dense < 0.01);
  CHECK(q8[1]["kl_vs_bf16_dense"].get<double>() > kl_dense);  // SparQ at k = 8 changes more
}

TEST_CASE("run with --profile and --trace reports phases and peak memory, and the bench subcommand runs", "[cli][profile][bench]") {
  const std::string small = shared_dir() + "/models/stories260K-hf";
  SPARQ_REQUIRE_SHARED(small);
  const std::string trace = temp_name("trace");
  const Result r = run("-m " + quote(small) + " -p 'Once upon a time' -n 8 --temp 0 -t 1 --profile --trace " +
                       quote(trace));
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("peak memory") != std::string::npos);
  CHECK(r.err.find("| phase | time ms | share | decode ms | decode MB | decode GB/s |") != std::string::npos);
  CHECK(r.err.find("| tokenizer | ") != std::string::npos);
  const nlohmann::json t = nlohmann::json::parse(read_text(trace));
  fs::remove(trace);
  CHECK(t["traceEvents"].size() > 8 * 7);  // 7 decode passes, each with its phases

  const Result b = run("bench -m " + quote(small) + " -p 8 -n 2 -d 0,4 -r 1 -t 1 --bandwidth 50 -o json");
  INFO("bench stderr: " << b.err);
  REQUIRE(b.code == 0);
  const nlohmann::json j = nlohmann::json::parse(b.out);
  CHECK(j["rows"].size() == 2 * (1 + 3));  // per depth: pp8, tg2 per default setting
  require_one_error_line(run("bench -m " + quote(small) + " -o xml"), "md, csv, json or jsonl");

  const Result v = run("--version");
  CHECK(v.code == 0);
  CHECK(v.out.rfind("sparq-run 0.1 (", 0) == 0);
  CHECK(v.out.find(j["build_commit"].get<std::string>()) != std::string::npos);  // the same build
}

TEST_CASE("attention settings given inline keep all their items", "[cli][sparq]") {
  const std::string small = shared_dir() + "/models/stories260K-hf";
  SPARQ_REQUIRE_SHARED(small);
  const Result r = run("-m " + quote(small) + " -p hi -n 2 --attention sparq:8,mean");
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("decode attention: sparq 1/8 mean") != std::string::npos);
}

TEST_CASE("baselines and SparQ's rules are settings of --compare, bad ones one error line", "[cli][baselines]") {
  const std::string small = shared_dir() + "/models/stories260K-hf";
  SPARQ_REQUIRE_SHARED(small);
  const std::string m = "-m " + quote(small);
  for (const char* bad : {"--attention window:8,sinks=-1", "--attention h2o:8,sinks=2", "--sparq-group sum",
                          "--sparq-split 0", "--attention topk:8,recent=3"})
    require_one_error_line(run(m + " -p hi -n 2 " + bad), "");
  const TempDir dir;
  std::string story;
  for (int i = 0; i < 80; ++i) story += "Once upon a time there was a little fox who liked to play. ";
  const std::string text = dir.write("t.txt", story);
  const std::string summary = (dir.path / "s.json").string();
  const Result r = run(m + " --perplexity " + quote(text) + " -c 256 --quiet --summary-json " + quote(summary) +
                       " --compare dense,window:k=40,sinks=2,h2o:k=40,recent=25,topk:k=20,l=4,group=logit,sparq:8,split=25");
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  const nlohmann::json s = nlohmann::json::parse(read_text(summary));
  std::vector<std::string> names;
  for (const auto& x : s["settings"]) names.push_back(x["setting"]);
  CHECK(names == std::vector<std::string>{"dense", "window:k=40,sinks=2", "h2o:k=40,recent=25", "topk:k=20,l=4,group=logit",
                                          "sparq:8,split=25"});
  for (size_t i = 0; i < names.size(); ++i) {
    CHECK(s["settings"][i]["kv_ratio"].get<double>() <= 1.0);
    CHECK(s["settings"][i].contains("kl_copyable") == (i > 0));  // where the KL comes from, but for dense
  }
  // window and h2o read 40 of S >= 128 positions, h2o after its first step reads all.
  CHECK(s["settings"][1]["kv_ratio"].get<double>() < 0.32);
  CHECK(s["settings"][2]["kv_ratio"].get<double>() > s["settings"][1]["kv_ratio"].get<double>());
}

TEST_CASE("the default context is the model's trained one", "[cli]") {
  const std::string bpe8k = shared_dir() + "/models/llama-27m-bpe8k";
  SPARQ_REQUIRE_SHARED(bpe8k);
  const Result r = run("-m " + quote(bpe8k) + " -p hi -n 2 --temp 0");
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("ctx 8192") != std::string::npos);
}

TEST_CASE("the kernel tier: --cpu and SPARQ_CPU pick it, a tier the CPU lacks is one error line", "[cli][errors]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  const std::string m = "-m " + quote(model_dir()) + " -p hi -n 2 --temp 0";
  for (CpuTier t : cpu_tiers_here()) {
    const std::string name = cpu_tier_name(t);
    INFO(name);
    const Result r = run(m + " --cpu " + name);
    REQUIRE(r.code == 0);
    CHECK(r.err.find(", " + name + " kernels\n") != std::string::npos);
    const Result v = run("--version --cpu " + name);
    CHECK(v.out.find("best on this CPU: " + std::string(cpu_tier_name(best_cpu_tier()))) != std::string::npos);
    const Result b = run("bench --kernel attention -S 512 --head-dims 64 --groups 1 --attention dense -r 1 -o json --cpu " + name);
    REQUIRE(b.code == 0);
    CHECK(b.out.find("\"kernels\": \"" + name + "\"") != std::string::npos);
  }
  require_one_error_line(run(m + " --cpu avx9"), "unknown CPU tier 'avx9'");
  const char* before = std::getenv("SPARQ_CPU");
  const std::string kept = before ? before : "";
  setenv("SPARQ_CPU", "avx9", 1);  // the child's environment
  const Result bad_env = run(m);
  before ? setenv("SPARQ_CPU", kept.c_str(), 1) : unsetenv("SPARQ_CPU");
  require_one_error_line(bad_env, "SPARQ_CPU: unknown CPU tier 'avx9'");
  for (CpuTier t : kCpuTiers)
    if (!cpu_has(t)) require_one_error_line(run(m + " --cpu " + cpu_tier_name(t)), "this CPU has no");
}
