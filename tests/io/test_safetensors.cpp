// safetensors reader: valid files of every readable dtype, each way a header
// can be wrong, random corruption, and the shared models read in place.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <random>

#include <nlohmann/json.hpp>

#include "sparq/model/config.h"
#include "sparq/io/safetensors.h"
#include "test_util.h"

using namespace sparq;
using namespace sparq::test;
using Catch::Matchers::Contains;
using nlohmann::json;

static_assert(std::endian::native == std::endian::little, "the test writer emits host bytes");

namespace {

// A header whose single tensor "t" is given as raw JSON, over `data`.
std::string one_entry(const std::string& entry, const std::string& data) {
  return with_header("{\"t\":" + entry + "}", data);
}

// Writes the image and expects opening it to fail naming the file and `keyword`.
void expect_refused(const std::string& bytes, const std::string& keyword) {
  TempDir tmp;
  const std::string path = tmp.write("bad.safetensors", bytes);
  const std::string msg = error_of([&] { SafetensorsFile f(path); });
  CHECK_THAT(msg, Contains(path) && Contains(keyword));
}

const std::vector<float> kF32 = {1.5f, -0.25f, 3e38f, -0.0f, 1e-42f, 7.0f};
// Bit patterns with values fixed by the formats: 1, -2, 65504 (max), 2^-24
// (smallest subnormal) in f16; 1, -3, 3.140625, -inf in bf16.
const std::vector<uint16_t> kF16 = {0x3c00, 0xc000, 0x7bff, 0x0001};
const std::vector<float> kF16Values = {1.0f, -2.0f, 65504.0f, 0x1p-24f};
const std::vector<uint16_t> kBF16 = {0x3f80, 0xc040, 0x4049, 0xff80};
const std::vector<float> kBF16Values = {1.0f, -3.0f, 3.140625f, -INFINITY};
const std::vector<double> kF64 = {0.1, -1e300, 5e-324};

std::vector<Raw> float_tensors() {
  return {{"a.f32", "F32", {2, 3}, bytes_of(kF32)},
          {"b.f16", "F16", {4}, bytes_of(kF16)},
          {"c.bf16", "BF16", {2, 1, 2}, bytes_of(kBF16)},
          {"d.f64", "F64", {3}, bytes_of(kF64)}};
}

}  // namespace

TEST_CASE("safetensors: F32, F16, BF16 and F64 tensors read back exactly") {
  for (size_t pad : {0, 3}) {  // 3: the data area is not 8-byte aligned
    for (bool with_meta : {true, false}) {
      TempDir tmp;
      const json meta = with_meta ? json{{"format", "pt"}, {"note", "x"}} : json(nullptr);
      const std::string path = tmp.write("m.safetensors", image(float_tensors(), meta, pad));
      SafetensorsFile f(path);
      CAPTURE(pad, with_meta);
      REQUIRE(f.tensors().size() == 4);
      CHECK(f.metadata().size() == (with_meta ? 2u : 0u));
      if (with_meta) CHECK(f.metadata().at("note") == "x");

      const TensorRef& a = f.at("a.f32");
      CHECK(a.dtype_name == "F32");
      CHECK(a.dtype == DType::F32);
      CHECK(a.shape_str() == "[2, 3]");
      CHECK(a.numel() == 6);
      CHECK(a.nbytes == 24);
      CHECK(a.to_f32() == kF32);

      const TensorRef& b = f.at("b.f16");
      CHECK(b.dtype == DType::F16);
      CHECK(b.to_f32() == kF16Values);
      const TensorRef& c = f.at("c.bf16");
      CHECK(c.dtype == DType::BF16);
      CHECK(c.to_f32() == kBF16Values);
      CHECK(c.is_weight_type());

      const TensorRef& d = f.at("d.f64");
      CHECK_FALSE(d.is_weight_type());
      CHECK(d.to_f64() == kF64);
      CHECK(d.to_f32()[0] == 0.1f);
      CHECK(f.find("nope") == nullptr);
      CHECK_THAT(error_of([&] { f.at("nope"); }), Contains("missing tensor 'nope'"));
    }
  }
}

TEST_CASE("safetensors: empty headers, scalars and zero-sized tensors are valid") {
  TempDir tmp;
  SafetensorsFile empty(tmp.write("e.safetensors", with_header("{}", "")));
  CHECK(empty.tensors().empty());

  // A 0-element tensor takes no bytes and may share its offset with a neighbour.
  const std::vector<Raw> ts = {{"zero", "F32", {0, 5}, ""},
                               {"scalar", "F32", {}, bytes_of(std::vector<float>{2.5f})},
                               {"zero2", "BF16", {3, 0}, ""}};
  SafetensorsFile f(tmp.write("z.safetensors", image(ts)));
  CHECK(f.at("zero").numel() == 0);
  CHECK(f.at("zero").to_f32().empty());
  CHECK(f.at("scalar").shape.empty());
  CHECK(f.at("scalar").to_f32() == std::vector<float>{2.5f});
}

TEST_CASE("safetensors: other dtypes open but cannot be read as floats") {
  TempDir tmp;
  const std::vector<Raw> ts = {{"ids", "I64", {2}, bytes_of(std::vector<int64_t>{1, 2})},
                               {"mask", "BOOL", {3}, std::string(3, '\1')},
                               {"w", "F32", {1}, bytes_of(std::vector<float>{1.0f})}};
  const std::string path = tmp.write("i.safetensors", image(ts));
  SafetensorsFile f(path);
  CHECK(f.at("ids").dtype_name == "I64");
  CHECK(f.at("ids").elem_size == 8);
  CHECK_FALSE(f.at("ids").is_weight_type());
  CHECK_THAT(error_of([&] { f.at("ids").to_f32(); }), Contains("'ids'") && Contains("I64"));
  CHECK_THAT(error_of([&] { f.at("mask").to_f64(); }), Contains("'mask'") && Contains("BOOL"));

  WeightStore w({path});
  CHECK_THAT(error_of([&] { w.get_f32("ids", {2}); }), Contains("'ids'") && Contains("I64"));
  CHECK(w.get_f32("w", {1}) == std::vector<float>{1.0f});
}

TEST_CASE("safetensors: malformed files are refused with a message naming the problem") {
  const std::string f32x3 = bytes_of(std::vector<float>{1, 2, 3});
  const std::string good_entry = R"({"dtype":"F32","shape":[3],"data_offsets":[0,12]})";

  SECTION("file level") {
    expect_refused("", "empty");
    expect_refused("abc", "too short");
    expect_refused(std::string(7, '\0'), "too short");
    // Header length larger than the file, and absurdly large.
    std::string big = one_entry(good_entry, f32x3);
    big[0] = char(0xff);
    expect_refused(big, "exceeds file size");
    std::string huge = one_entry(good_entry, f32x3);
    huge[7] = char(0x7f);
    expect_refused(huge, "limit");
    // Cut inside the header, and inside the data.
    const std::string whole = one_entry(good_entry, f32x3);
    expect_refused(whole.substr(0, 20), "exceeds file size");
    expect_refused(whole.substr(0, whole.size() - 4), "beyond the data area");
  }
  SECTION("header JSON") {
    expect_refused(with_header("{\"t\": ", ""), "not valid JSON");
    expect_refused(with_header("\xff\xfe", ""), "not valid JSON");
    expect_refused(with_header("[1, 2]", ""), "not a JSON object");
    expect_refused(with_header("\"text\"", ""), "not a JSON object");
    expect_refused(with_header(R"({"t": [1]})", ""), "not a JSON object");
    expect_refused(with_header("{\"t\":" + good_entry + ",\"t\":" + good_entry + "}", f32x3),
                   "names \"t\" twice");
    expect_refused(with_header("{\"a\\nb\":" + good_entry + "}", f32x3), "control characters");
    expect_refused(with_header(R"({"__metadata__": {"a": 1}})", ""), "__metadata__");
    expect_refused(with_header(R"({"__metadata__": [1]})", ""), "__metadata__");
  }
  SECTION("dtype and shape") {
    expect_refused(one_entry(R"({"dtype":"Q4","shape":[3],"data_offsets":[0,12]})", f32x3),
                   "unknown dtype \"Q4\"");
    expect_refused(one_entry(R"({"shape":[3],"data_offsets":[0,12]})", f32x3), "missing dtype");
    expect_refused(one_entry(R"({"dtype":"F32","data_offsets":[0,12]})", f32x3), "missing shape");
    expect_refused(one_entry(R"({"dtype":"F32","shape":[-3],"data_offsets":[0,12]})", f32x3),
                   "non-negative");
    expect_refused(one_entry(R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,12]})", f32x3),
                   "non-negative");
    expect_refused(one_entry(R"({"dtype":"F32","shape":["3"],"data_offsets":[0,12]})", f32x3),
                   "non-negative");
    expect_refused(
        one_entry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,12]})",
                  f32x3),
        "overflows");
    expect_refused(
        one_entry(R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,12]})",
                  f32x3),
        "non-negative");
    expect_refused(one_entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,12]})", f32x3),
                   "needs 8");
    expect_refused(one_entry(R"({"dtype":"F16","shape":[3],"data_offsets":[0,12]})", f32x3),
                   "needs 6");
  }
  SECTION("offsets") {
    expect_refused(one_entry(R"({"dtype":"F32","shape":[3],"data_offsets":[0,24]})", f32x3),
                   "beyond the data area");
    expect_refused(one_entry(R"({"dtype":"F32","shape":[0],"data_offsets":[12,0]})", f32x3),
                   "end before");
    expect_refused(one_entry(R"({"dtype":"F32","shape":[3],"data_offsets":[0]})", f32x3),
                   "two non-negative integers");
    expect_refused(one_entry(R"({"dtype":"F32","shape":[3],"data_offsets":[-4,8]})", f32x3),
                   "two non-negative integers");
    expect_refused(one_entry(R"({"dtype":"F32","shape":[3],"data_offsets":[0,12,12]})", f32x3),
                   "two non-negative integers");
    // Holes before, between and after the tensors, and overlap.
    expect_refused(one_entry(R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})", f32x3),
                   "belong to no tensor");
    expect_refused(one_entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})", f32x3),
                   "belong to no tensor");
    expect_refused(with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                               f32x3),
                   "belong to no tensor");
    expect_refused(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               f32x3),
                   "overlap");
  }
}

TEST_CASE("safetensors: files that cannot be opened") {
  TempDir tmp;
  CHECK_THAT(error_of([&] { SafetensorsFile f((tmp.path / "absent.safetensors").string()); }),
             Contains("absent.safetensors") && Contains("cannot open"));
  CHECK_THAT(error_of([&] { SafetensorsFile f(tmp.path.string()); }),
             Contains("not a regular file"));
}

TEST_CASE("safetensors: random corruption gives an Error or a consistent file, never a crash") {
  const std::string good = image(float_tensors(), json{{"format", "pt"}});
  std::mt19937 rng(12345);
  int accepted = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::string b = good;
    const int kind = iter % 3;
    if (kind == 0) {
      b.resize(rng() % b.size());
    } else {
      const int flips = 1 + int(rng() % 4);
      for (int i = 0; i < flips; ++i) {
        // Mostly inside the length and header, where the structure is.
        const size_t at = rng() % std::min<size_t>(b.size(), kind == 1 ? 8 : b.size());
        b[at] = char(rng());
      }
    }
    try {
      const auto ts = SafetensorsFile::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(),
                                             "fuzz.safetensors");
      ++accepted;
      for (const TensorRef& t : ts)  // reads every byte the header claims (ASan checks)
        if (t.is_weight_type() || t.dtype_name == "F64") CHECK(t.to_f64().size() == size_t(t.numel()));
    } catch (const Error& e) {
      CHECK_THAT(std::string(e.what()), Contains("fuzz.safetensors"));
    }
  }
  CHECK(accepted > 0);  // flips inside the data area keep the file valid
}

TEST_CASE("WeightStore: shapes, conversion and duplicates across shards") {
  TempDir tmp;
  const std::string a = tmp.write(
      "a.safetensors",
      image({{"x", "BF16", {2, 2}, bytes_of(kBF16)}, {"y", "F32", {2, 3}, bytes_of(kF32)}}));
  const std::string b = tmp.write("b.safetensors", image({{"z", "F16", {4}, bytes_of(kF16)}}));
  WeightStore w({a, b});
  CHECK(w.has("x"));
  CHECK(w.has("z"));
  CHECK_FALSE(w.has("q"));
  CHECK(w.get("y", {2, 3}).dtype == DType::F32);
  CHECK(w.get_f32("x", {2, 2}) == kBF16Values);
  CHECK(w.get_f32("z", {4}) == kF16Values);
  CHECK(w.file_bytes() == std::filesystem::file_size(a) + std::filesystem::file_size(b));

  CHECK_THAT(error_of([&] { w.get("q", {1}); }), Contains("missing tensor 'q'"));
  CHECK_THAT(error_of([&] { w.get("y", {3, 2}); }),
             Contains("'y' has shape [2, 3], expected [3, 2]"));
  CHECK_THAT(error_of([&] { w.get("z", {}); }), Contains("expected []"));

  const std::string c = tmp.write("c.safetensors", image({{"y", "F16", {4}, bytes_of(kF16)}}));
  CHECK_THAT(error_of([&] { WeightStore dup({a, c}); }),
             Contains("'y'") && Contains("a.safetensors") && Contains("c.safetensors"));
  CHECK_THAT(error_of([&] { WeightStore none({}); }), Contains("no .safetensors"));
  CHECK_THAT(error_of([&] { WeightStore bad({a, tmp.write("d.safetensors", "xy")}); }),
             Contains("d.safetensors"));
}

TEST_CASE("safetensors: llama-27m-prose shards agree with their index and config") {
  const std::string dir = shared_dir() + "/models/llama-27m-prose";
  SPARQ_REQUIRE_SHARED(dir + "/model.safetensors.index.json");
  const json index = json::parse(read_text(dir + "/model.safetensors.index.json"));
  const ModelFiles files = resolve_model_files(dir);

  std::map<std::string, std::unique_ptr<SafetensorsFile>> shards;
  size_t n_tensors = 0, n_bytes = 0;
  for (const std::string& p : files.safetensors) {
    auto f = std::make_unique<SafetensorsFile>(p);
    n_tensors += f->tensors().size();
    for (const TensorRef& t : f->tensors()) n_bytes += t.nbytes;
    shards[std::filesystem::path(p).filename().string()] = std::move(f);
  }
  const json& map = index.at("weight_map");
  CHECK(n_tensors == map.size());
  CHECK(n_bytes == index.at("metadata").at("total_size").get<size_t>());
  for (const auto& [name, file] : map.items()) {
    CAPTURE(name);
    REQUIRE(shards.count(file.get<std::string>()) == 1);
    CHECK(shards[file.get<std::string>()]->find(name) != nullptr);
  }

  const ModelConfig c = ModelConfig::load(files.config);
  const WeightStore w(files.safetensors);
  const int64_t H = c.hidden_size, D = c.head_dim, I = c.intermediate_size;
  CHECK(w.get("model.embed_tokens.weight", {c.vocab_size, H}).dtype == DType::BF16);
  CHECK(w.has("lm_head.weight") == !c.tie_word_embeddings);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    w.get(p + "self_attn.q_proj.weight", {c.n_heads * D, H});
    w.get(p + "self_attn.k_proj.weight", {c.n_kv_heads * D, H});
    w.get(p + "self_attn.v_proj.weight", {c.n_kv_heads * D, H});
    w.get(p + "self_attn.o_proj.weight", {H, c.n_heads * D});
    w.get(p + "mlp.gate_proj.weight", {I, H});
    w.get(p + "mlp.up_proj.weight", {I, H});
    w.get(p + "mlp.down_proj.weight", {H, I});
    for (float v : w.get_f32(p + "input_layernorm.weight", {H})) REQUIRE(std::isfinite(v));
  }
}

TEST_CASE("safetensors: stories260K-hf holds the same weights as the llama2.c file") {
  const std::string hf = shared_dir() + "/models/stories260K-hf/model.safetensors";
  const std::string bin = shared_dir() + "/models/stories260K/stories260K.bin";
  SPARQ_REQUIRE_SHARED(hf);
  SPARQ_REQUIRE_SHARED(bin);
  const ModelConfig c = ModelConfig::load(shared_dir() + "/models/stories260K-hf/config.json");
  SafetensorsFile f(hf);
  // embed + final norm + 9 per layer (+ lm_head when untied)
  CHECK(f.tensors().size() == size_t(2 + 9 * c.n_layers + (c.tie_word_embeddings ? 0 : 1)));
  CHECK(f.metadata().at("format") == "pt");

  // llama2.c layout: 7 int32 (dim, ffn, layers, heads, kv heads, vocab,
  // seq_len), then the embedding table and the attention RMSNorm weights.
  const std::string raw = read_text(bin);
  int32_t h[7];
  std::memcpy(h, raw.data(), sizeof h);
  REQUIRE(h[0] == c.hidden_size);
  REQUIRE(h[5] == c.vocab_size);
  const size_t n_embed = size_t(c.vocab_size) * size_t(c.hidden_size);
  std::vector<float> table(n_embed + size_t(c.n_layers * c.hidden_size));
  REQUIRE(raw.size() >= sizeof h + table.size() * 4);
  std::memcpy(table.data(), raw.data() + sizeof h, table.size() * 4);

  WeightStore w({hf});
  const auto embed = w.get_f32("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  CHECK(std::equal(embed.begin(), embed.end(), table.begin()));
  for (int l = 0; l < c.n_layers; ++l) {
    const auto norm = w.get_f32(fmt::format("model.layers.{}.input_layernorm.weight", l),
                                {c.hidden_size});
    CHECK(std::equal(norm.begin(), norm.end(), table.begin() + n_embed + size_t(l * c.hidden_size)));
  }
}

TEST_CASE("safetensors: the float64 SparQ goldens have the shapes cases.json gives") {
  const std::string dir = shared_dir() + "/golden/sparq";
  SPARQ_REQUIRE_SHARED(dir + "/vectors.safetensors");
  const json cases = json::parse(read_text(dir + "/cases.json")).at("cases");
  SafetensorsFile f(dir + "/vectors.safetensors");
  REQUIRE(!cases.empty());
  for (const json& cs : cases) {
    const int64_t S = cs.at("S"), qh = cs.at("q_heads"), kvh = cs.at("kv_heads"), d = cs.at("d");
    const std::string in = cs.at("input");
    const TensorRef& out = f.at(cs.at("output").get<std::string>());
    CHECK(out.dtype_name == "F64");
    CHECK(out.shape == std::vector<int64_t>{qh, d});
    CHECK(f.at(in + ".q").shape == std::vector<int64_t>{qh, d});
    CHECK(f.at(in + ".K").shape == std::vector<int64_t>{S, kvh, d});
    CHECK(f.at(in + ".V").shape == std::vector<int64_t>{S, kvh, d});
    for (double v : out.to_f64()) REQUIRE(std::isfinite(v));
  }
}

// A 4 MiB F32 tensor "t" written to dir/name.
static std::string big_file(const TempDir& dir, const std::string& name) {
  const size_t n = size_t(1) << 20;
  return dir.write(name, with_header(R"({"t":{"dtype":"F32","shape":[)" + std::to_string(n) +
                                         R"(],"data_offsets":[0,)" + std::to_string(4 * n) + "]}}",
                                     std::string(4 * n, '\0')));
}

TEST_CASE("safetensors: a file that shrinks while mapped ends the process with one error line", "[safetensors][errors]") {
  const TempDir dir;
  const std::string path = big_file(dir, "shrinks.safetensors");
  const std::string err = (dir.path / "stderr").string();
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // the child reads the tensor after the file lost its data pages
    dup2(open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), 2);
    const SafetensorsFile f(path);
    if (truncate(path.c_str(), 4096) != 0) _exit(3);
    f.at("t").to_f32();
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  const std::string msg = read_text(err);
  INFO("stderr: " << msg);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK(msg == "error: " + path + ": the file shrank or changed while it was being read\n");
}

TEST_CASE("safetensors: a file rewritten after it was opened is refused by check_unchanged", "[safetensors][errors]") {
  const TempDir dir;
  const std::string path = big_file(dir, "changes.safetensors");
  const WeightStore w({path});
  w.check_unchanged();
  // Another size, so the check does not depend on the file system's time resolution.
  { std::ofstream(path, std::ios::app) << "more"; }
  CHECK_THAT(error_of([&] { w.check_unchanged(); }), Contains(path) && Contains("changed while it was being read"));
}
