// Finding a model's files the way HuggingFace lays them out: config.json,
// model.safetensors or shards named by model.safetensors.index.json, and
// tokenizer.json (or, for llama2.c conversions, a tokenizer .bin).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "sparq/util/common.h"
#include "sparq/model/config.h"
#include "sparq/io/json_text.h"

namespace sparq {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// Regular files in dir whose names satisfy pred, sorted.
template <class Pred>
std::vector<std::string> list_files(const fs::path& dir, Pred pred) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (is_file(it->path()) && pred(it->path().filename().string()))
      out.push_back(it->path().string());
  if (ec) fail("{}: cannot list the directory ({})", dir.string(), ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

std::string find_tokenizer(const fs::path& dir) {
  for (const char* name : {"tokenizer.json", "tokenizer.bin"})
    if (is_file(dir / name)) return (dir / name).string();
  const auto bins = list_files(dir, [](const std::string& n) {
    return n.starts_with("tok") && n.ends_with(".bin");
  });
  if (bins.size() > 1)
    fail("{}: no tokenizer.json and several llama2.c tokenizers ({}); keep one", dir.string(),
         fmt::join(bins, ", "));
  if (bins.empty()) fail("no tokenizer.json (nor a llama2.c tok*.bin) in {}", dir.string());
  return bins[0];
}

std::vector<std::string> shards_from_index(const fs::path& dir, const fs::path& index) {
  const std::string what = index.filename().string();
  std::ifstream f(index, std::ios::binary);
  if (!f) fail("{}: cannot read", index.string());
  std::stringstream ss;
  ss << f.rdbuf();
  json j;
  try {
    j = parse_json(ss.str());
  } catch (const Error& e) {
    fail("{}: {}", index.string(), e.what());
  }
  const auto wm = j.is_object() ? j.find("weight_map") : j.end();
  if (wm == j.end() || !wm->is_object() || wm->empty())
    fail("{}: no weight_map naming the shards", index.string());
  std::set<std::string> names;
  for (const auto& [tensor, file] : wm->items()) {
    if (!file.is_string())
      fail("{}: shard of {} is not a file name", index.string(), json(tensor).dump());
    const std::string name = file.get<std::string>();
    // Shards sit beside the index; a path here would point outside the model.
    if (name.empty() || name == "." || name == ".." ||
        std::any_of(name.begin(), name.end(), [](char c) { return c == '/' || uint8_t(c) < 0x20; }))
      fail("{}: shard name {} is not a plain file name", index.string(), file.dump());
    names.insert(name);
  }
  std::vector<std::string> out;
  for (const std::string& n : names) {
    if (!is_file(dir / n)) fail("shard {} listed in {} is missing in {}", n, what, dir.string());
    out.push_back((dir / n).string());
  }
  return out;
}

std::vector<std::string> find_weights(const fs::path& dir) {
  if (is_file(dir / "model.safetensors")) return {(dir / "model.safetensors").string()};
  if (is_file(dir / "model.safetensors.index.json"))
    return shards_from_index(dir, dir / "model.safetensors.index.json");
  auto all = list_files(dir, [](const std::string& n) { return n.ends_with(".safetensors"); });
  if (all.empty()) fail("{}: no .safetensors files", dir.string());
  return all;
}

}  // namespace

ModelFiles resolve_model_files(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  if (path.empty() || !fs::exists(p, ec)) fail("model path '{}' does not exist", path);
  const bool is_dir = fs::is_directory(p, ec);
  if (!is_dir && !(is_file(p) && p.extension() == ".safetensors"))
    fail("{}: not a model directory or a .safetensors file", path);

  ModelFiles m;
  const fs::path dir = is_dir ? p : (p.has_parent_path() ? p.parent_path() : fs::path("."));
  m.dir = dir.string();
  if (!is_file(dir / "config.json")) fail("no config.json in {}", m.dir);
  m.config = (dir / "config.json").string();
  m.safetensors = is_dir ? find_weights(dir) : std::vector<std::string>{p.string()};
  m.tokenizer = find_tokenizer(dir);
  return m;
}

}  // namespace sparq
