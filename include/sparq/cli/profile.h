// --profile: where the time of a run went, phase by phase, with the bytes each
// phase read and the rate it read them at.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "sparq/engine/generate.h"

namespace sparq {

struct Phase {
  std::string name;
  int level = 0;     // 0: a phase of the forward pass; 1: part of the attention phase before it
  double seconds = 0;
  uint64_t bytes = 0;  // 0: not counted
};

// The phases of the forward passes that s counts, in the order they run in
// a layer; SparQ's parts (step 1 with the component selection, top-k, step 3,
// mix) are always listed, zero where SparQ did not run.
std::vector<Phase> forward_phases(const ForwardStats& s);

// The table --profile prints: the forward phases of prompt and decode,
// sampling, tokenizer, and the rest of total_s (all in seconds).
void print_profile(std::FILE* f, const GenerateResult& r, double tokenizer_s, double total_s);

}  // namespace sparq
