// One line of a --batch JSONL file, and the task metrics run on what it holds.
// prompt_file paths resolve against a directory that does not exist.
#include <cstdint>
#include <string>

#include "sparq/eval/eval.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string line(reinterpret_cast<const char*>(data), size);
  try {
    const sparq::BatchItem it = sparq::parse_batch_line(line, "/nonexistent-sparq-fuzz");
    sparq::repeat_chars_matched(it.prompt, it.reference);
    sparq::answer_matches(it.prompt, it.reference);
    sparq::match_answer(it.prompt);
  } catch (const sparq::Error&) {
  }
  return 0;
}
