// Batch-file lines and the metrics of the evaluation tasks.
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sparq/eval/eval.h"
#include "sparq/io/json_text.h"

namespace sparq {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

}  // namespace

BatchItem parse_batch_line(const std::string& line, const std::string& base_dir) {
  using nlohmann::json;
  const json j = parse_json(line);
  if (!j.is_object()) fail("not a JSON object");
  BatchItem it;
  const auto id = j.find("id");
  if (id == j.end() || !(id->is_string() || id->is_number_integer())) fail("missing \"id\" (string or integer)");
  it.id = id->is_string() ? id->get<std::string>() : std::to_string(id->get<long long>());
  const auto task = j.find("task");
  if (task != j.end() && !task->is_string()) fail("\"task\" must be a string");
  it.task = task == j.end() ? "generate" : task->get<std::string>();
  if (it.task != "generate" && it.task != "score" && it.task != "repeat" && it.task != "match")
    fail("unknown task \"{}\" (generate, score, repeat or match)", it.task);
  const bool has_prompt = j.contains("prompt"), has_file = j.contains("prompt_file");
  if (has_prompt == has_file) fail("give exactly one of \"prompt\" and \"prompt_file\"");
  if (has_prompt) {
    if (!j["prompt"].is_string()) fail("\"prompt\" must be a string");
    it.prompt = j["prompt"].get<std::string>();
  } else {
    if (!j["prompt_file"].is_string()) fail("\"prompt_file\" must be a string");
    const auto path = std::filesystem::path(base_dir) / j["prompt_file"].get<std::string>();
    // A FIFO or a device (/dev/zero) would block or never end.
    std::error_code ec;
    const auto kind = std::filesystem::status(path, ec).type();
    if (kind != std::filesystem::file_type::regular && kind != std::filesystem::file_type::not_found)
      fail("prompt_file {} is not a regular file", path.string());
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("cannot open prompt_file {}", path.string());
    std::stringstream ss;
    ss << f.rdbuf();
    it.prompt = ss.str();
  }
  if (j.contains("reference")) {
    if (!j["reference"].is_string()) fail("\"reference\" must be a string");
    it.reference = j["reference"].get<std::string>();
  }
  if (it.task != "generate" && it.reference.empty()) fail("task \"{}\" needs a non-empty \"reference\"", it.task);
  if (j.contains("n_predict")) {
    if (!j["n_predict"].is_number_integer()) fail("\"n_predict\" must be an integer");
    const long long n = j["n_predict"].get<long long>();
    if (n < 1 || n > 1000000) fail("\"n_predict\" must be in [1, 1000000], got {}", n);
    it.n_predict = int(n);
  }
  return it;
}

size_t repeat_chars_matched(const std::string& generated, const std::string& reference) {
  size_t bytes = 0;
  while (bytes < generated.size() && bytes < reference.size() && generated[bytes] == reference[bytes]) ++bytes;
  // Count whole characters: UTF-8 lead bytes of the matched prefix whose
  // character is complete within it.
  size_t chars = 0;
  for (size_t i = 0; i < bytes;) {
    const unsigned char c = static_cast<unsigned char>(reference[i]);
    const size_t len = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (i + len > bytes) break;
    i += len;
    ++chars;
  }
  return chars;
}

std::string match_answer(const std::string& generated) {
  std::string_view s = trim(generated);
  size_t end = 0;
  while (end < s.size() && !std::isspace(static_cast<unsigned char>(s[end]))) ++end;
  s = s.substr(0, end);
  while (!s.empty() && std::ispunct(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

bool answer_matches(const std::string& generated, const std::string& reference) {
  return !trim(reference).empty() && match_answer(generated) == trim(reference);
}

}  // namespace sparq
