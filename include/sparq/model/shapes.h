// Real model configurations by name, for benchmarks with random weights
// (bench --shape): the config.json text their HuggingFace repositories carry.
#pragma once
#include <string>
#include <vector>

namespace sparq {

// The names shape_config_json knows.
std::vector<std::string> shape_names();

// config.json text for "NAME" or "NAME:key=value,key=value" (config.json keys
// with JSON values overriding the named shape's, e.g.
// "llama-3.2-1b:vocab_size=8192"), or the contents of a config.json path
// (any spec ending in .json). Throws Error for an unknown name, a bad
// override or an unreadable file.
std::string shape_config_json(const std::string& spec);

}  // namespace sparq
