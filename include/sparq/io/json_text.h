// JSON from untrusted text (config.json, tokenizer.json, safetensors headers,
// batch lines). nlohmann reports bad syntax as parse_error but a number too
// large for a double as out_of_range: both become one sparq::Error here.
#pragma once
#include <string_view>

#include <nlohmann/json.hpp>

namespace sparq {

// Throws Error "not valid JSON (error at byte N)" or "not valid JSON (a number
// is too large)"; callers prefix what the text was.
nlohmann::json parse_json(std::string_view text, const nlohmann::json::parser_callback_t& cb = nullptr);

}  // namespace sparq
