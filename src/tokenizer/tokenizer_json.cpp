// Field access for tokenizer.json that names the field when it is wrong.
#include <nlohmann/json.hpp>

#include "sparq/util/common.h"
#include "sparq/tokenizer/tokenizer_parts.h"
#include "sparq/util/utf8.h"

namespace sparq::tok {

const Json* field(const Json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

const Json& need(const Json& obj, const char* key, std::string_view where) {
  const Json* v = field(obj, key);
  if (!v) fail("{} has no \"{}\"", where, key);
  return *v;
}

std::string need_string(const Json& obj, const char* key, std::string_view where) {
  const Json& v = need(obj, key, where);
  if (!v.is_string()) fail("{}: \"{}\" must be a string", where, key);
  return v.get<std::string>();
}

const Json& need_list(const Json& obj, const char* key, std::string_view where) {
  const Json& v = need(obj, key, where);
  if (!v.is_array()) fail("{}: \"{}\" must be a list", where, key);
  return v;
}

std::string need_char(const Json& obj, const char* key, std::string_view where) {
  std::string s = need_string(obj, key, where);
  size_t i = 0;
  if (s.empty() || !utf8::valid(s) || (utf8::next(s, i), i != s.size()))
    fail("{}: \"{}\" must be a single character", where, key);
  return s;
}

std::string type_of(const Json& component, std::string_view what) {
  if (!component.is_object()) fail("{} must be a JSON object", what);
  return need_string(component, "type", what);
}

bool opt_bool(const Json& obj, const char* key, bool dflt, std::string_view where) {
  const Json* v = field(obj, key);
  if (!v) return dflt;
  if (!v->is_boolean()) fail("{}: \"{}\" must be true or false", where, key);
  return v->get<bool>();
}

int64_t opt_int(const Json& obj, const char* key, int64_t dflt, std::string_view where) {
  const Json* v = field(obj, key);
  if (!v) return dflt;
  if (!v->is_number_integer()) fail("{}: \"{}\" must be an integer", where, key);
  return v->get<int64_t>();
}

}  // namespace sparq::tok
