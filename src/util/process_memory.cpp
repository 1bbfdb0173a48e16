#include "sparq/util/process_memory.h"

#include <fstream>
#include <string>

namespace sparq {

size_t peak_memory_bytes() {
  std::ifstream f("/proc/self/status");
  std::string key;
  while (f >> key) {
    if (key == "VmHWM:") {
      size_t kib = 0;
      f >> kib;
      return kib * 1024;
    }
    f.ignore(1 << 16, '\n');
  }
  return 0;
}

bool reset_peak_memory() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5\n";
  f.flush();
  return bool(f);
}

}  // namespace sparq
