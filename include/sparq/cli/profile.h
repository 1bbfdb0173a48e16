// --profile: where the time of a run went, phase by phase, with the bytes each
// phase read and the rate it read them at.
#pragma once
#include <cstdio>

#include "sparq/engine/generate.h"

namespace sparq {

// The table --profile prints: the forward phases of prompt and decode,
// sampling, tokenizer, and the rest of total_s (all in seconds).
void print_profile(std::FILE* f, const GenerateResult& r, double tokenizer_s, double total_s);

}  // namespace sparq
