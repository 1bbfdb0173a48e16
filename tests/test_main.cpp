// Catch2's runner brings in libstdc++'s std::regex, whose code GCC 12 flags
// with false -Wmaybe-uninitialized warnings when built with ASan.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
