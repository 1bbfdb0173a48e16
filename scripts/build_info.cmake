# Run at every build (CMakeLists.txt, target sparq_build_info): writes OUT, a
# C++ source holding the source tree's git commit, and rewrites it only when
# the commit changed, so an unchanged tree recompiles nothing.
execute_process(COMMAND git -C "${SRC}" describe --always --dirty --abbrev=10
                OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR commit STREQUAL "")
  set(commit "unknown")
endif()
set(text "// Written by scripts/build_info.cmake at each build.\n#include \"sparq/util/build_info.h\"\n\nconst char* const sparq::kBuildCommit = \"${commit}\";\n")
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
