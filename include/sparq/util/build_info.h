// Which source this binary was built from, for --version and the benchmark
// records (results are compared across builds).
#pragma once

namespace sparq {

// `git describe --always --dirty` of the source tree at build time ("unknown"
// outside a git checkout).
extern const char* const kBuildCommit;

}  // namespace sparq
