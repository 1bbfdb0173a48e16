#include "sparq/io/json_text.h"

#include "sparq/util/common.h"

namespace sparq {

nlohmann::json parse_json(std::string_view text, const nlohmann::json::parser_callback_t& cb) {
  try {
    return nlohmann::json::parse(text.begin(), text.end(), cb);
  } catch (const nlohmann::json::parse_error& e) {
    fail("not valid JSON (error at byte {})", e.byte);
  } catch (const nlohmann::json::exception&) {
    fail("not valid JSON (a number is too large)");
  }
}

}  // namespace sparq
