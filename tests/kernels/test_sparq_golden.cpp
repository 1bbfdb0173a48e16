// SparQ against the float64 goldens of ../shared/golden/sparq: for every case,
// the selections i1 and i2, alpha and the output, on f32 and bf16 caches and
// every CPU tier here; and dense decode attention against the dense outputs.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sparq/util/cpu.h"
#include "sparq/kernels/kv_cache.h"
#include "sparq/io/safetensors.h"
#include "sparq/kernels/sparq_decode.h"
#include "cpu_tiers.h"
#include "test_util.h"

using namespace sparq;
using json = nlohmann::json;

namespace {

// The brief's bound for alpha; cases.json gives none (alpha sums probabilities).
constexpr double kAlphaTol = 1e-5;

const std::string kDir = test::shared_dir() + "/golden/sparq";

// The bounds of cases.json "tolerance", in order: f32 caches, then bf16 caches.
std::vector<double> tolerances(const std::string& text) {
  std::vector<double> t;
  for (size_t at = text.find("<="); at != std::string::npos; at = text.find("<=", at + 2))
    t.push_back(std::stod(text.substr(at + 2)));
  return t;
}

// One captured decode step: q [H][d], K and V [S][KVH][d], in caches of both types.
struct Input {
  int S = 0, H = 0, KVH = 0, d = 0;
  std::vector<float> q;
  std::map<KVType, std::unique_ptr<KVCache>> cache;
};

Input load_input(const SafetensorsFile& f, const json& c) {
  const std::string name = c["input"];
  Input in;
  in.S = c["S"];
  in.H = c["q_heads"];
  in.KVH = c["kv_heads"];
  in.d = c["d"];
  in.q = f.at(name + ".q").to_f32();
  const std::vector<float> K = f.at(name + ".K").to_f32(), V = f.at(name + ".V").to_f32();
  REQUIRE(in.q.size() == size_t(in.H) * in.d);
  REQUIRE(K.size() == size_t(in.S) * in.KVH * in.d);
  REQUIRE(V.size() == K.size());
  for (KVType t : {KVType::F32, KVType::BF16}) {
    auto cache = std::make_unique<KVCache>(KVShape{1, in.KVH, in.d, in.S, t});
    for (int p = 0; p < in.S; ++p) {
      const size_t row = size_t(p) * in.KVH * in.d;
      cache->store(0, p, &K[row], &V[row]);
    }
    in.cache[t] = std::move(cache);
  }
  return in;
}

// cases.json, its two tolerances and the vectors file, as both test cases read them.
struct Goldens {
  json doc = json::parse(test::read_text(kDir + "/cases.json"));
  std::vector<double> tol = tolerances(doc["tolerance"]);
  SafetensorsFile vectors{kDir + "/vectors.safetensors"};
  Goldens() { REQUIRE(tol.size() == 2); }
};

double max_abs_diff(const std::vector<float>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  double m = 0;
  for (size_t i = 0; i < got.size(); ++i) m = std::max(m, std::abs(double(got[i]) - want[i]));
  return m;
}

}  // namespace

TEST_CASE("sparq goldens: selections, alpha and outputs of every case", "[sparq][golden]") {
  SPARQ_REQUIRE_SHARED(kDir + "/cases.json");
  const Goldens g;
  const json& doc = g.doc;
  const std::vector<double>& tol = g.tol;
  const SafetensorsFile& vectors = g.vectors;
  std::map<std::string, Input> inputs;
  const std::vector<CpuTier> tiers = test::all_tiers_here();
  int bf16_compared = 0, bf16_reselected = 0;

  for (const json& c : doc["cases"]) {
    const std::string name = c["input"];
    if (!inputs.count(name)) inputs.emplace(name, load_input(vectors, c));
    const Input& in = inputs.at(name);
    const int G = in.H / in.KVH;
    const SparqStep st{false, c["r"], c["k"], c["l"], c["mean_mixing"]};
    const std::vector<double> want = vectors.at(c["output"]).to_f64();
    for (KVType t : {KVType::F32, KVType::BF16})
      for (const CpuTier tier : tiers) {
        const std::string output = c["output"];
        INFO("case " << output << ", " << kv_type_name(t) << " cache, " << cpu_tier_name(tier) << " tier");
        std::vector<float> out(size_t(in.H) * in.d);
        std::vector<SparqTrace> trace;
        {
          const test::TierScope scope(tier);
          const DecodeQuery dq{in.cache.at(t).get(), in.S, in.q.data(), out.data()};
          sparq_decode_step({&dq, 1}, 0, in.H, st, nullptr, &trace);
        }
        REQUIRE(int(trace.size()) == in.KVH);

        bool same_selection = true;
        for (const json& s : c["selection"]) {
          if (s.contains("kv_head")) {
            const SparqTrace& tr = trace.at(s["kv_head"].get<size_t>());
            const bool same = tr.i1 == s["i1"].get<std::vector<int>>() && tr.i2 == s["i2"].get<std::vector<int>>();
            if (t == KVType::F32) {
              INFO("kv head " << s["kv_head"]);
              REQUIRE(tr.i1 == s["i1"].get<std::vector<int>>());
              REQUIRE(tr.i2 == s["i2"].get<std::vector<int>>());
            }
            same_selection = same_selection && same;
          } else if (t == KVType::F32) {
            const int h = s["q_head"];
            INFO("q head " << h);
            REQUIRE(std::abs(trace.at(size_t(h / G)).alpha.at(size_t(h % G)) - s["alpha"].get<double>()) <= kAlphaTol);
          }
        }
        if (t == KVType::F32) {
          REQUIRE(max_abs_diff(out, want) <= tol[0]);
        } else if (same_selection) {
          REQUIRE(max_abs_diff(out, want) <= tol[1]);
          ++bf16_compared;
        } else {
          ++bf16_reselected;
        }
      }
  }
  INFO("bf16 cases with the golden selection: " << bf16_compared << ", reselected: " << bf16_reselected);
  REQUIRE(bf16_compared > 0);
}

TEST_CASE("sparq goldens: dense decode attention matches the dense outputs", "[sparq][golden]") {
  SPARQ_REQUIRE_SHARED(kDir + "/cases.json");
  const Goldens g;
  const json& doc = g.doc;
  const std::vector<double>& tol = g.tol;
  const SafetensorsFile& vectors = g.vectors;
  std::map<std::string, Input> inputs;
  for (const json& c : doc["cases"]) {
    const std::string name = c["input"];
    if (inputs.count(name)) continue;
    const Input& in = inputs.emplace(name, load_input(vectors, c)).first->second;
    const std::vector<double> want = vectors.at(name + ".dense").to_f64();
    for (KVType t : {KVType::F32, KVType::BF16}) {
      INFO("input " << name << ", " << kv_type_name(t) << " cache");
      std::vector<float> out(size_t(in.H) * in.d);
      const DecodeQuery dq{in.cache.at(t).get(), in.S, in.q.data(), out.data()};
      attention_decode({&dq, 1}, 0, in.H, AttentionSettings{}, nullptr);
      REQUIRE(max_abs_diff(out, want) <= (t == KVType::F32 ? tol[0] : tol[1]));
    }
  }
  REQUIRE(inputs.size() > 0);
}
