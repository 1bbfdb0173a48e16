// A safetensors file image: header length, JSON header, tensor table and data
// area. Whatever parse() accepts must describe bytes inside the image, and
// reading every float tensor must stay inside it.
#include <cstdint>
#include <cstdlib>

#include "sparq/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<sparq::TensorRef> tensors;
  std::map<std::string, std::string> metadata;
  try {
    tensors = sparq::SafetensorsFile::parse(data, size, "fuzz.safetensors", &metadata);
  } catch (const sparq::Error&) {
    return 0;
  }
  for (const sparq::TensorRef& t : tensors) {
    const auto* p = static_cast<const uint8_t*>(t.data);
    if (p < data || p + t.nbytes > data + size) std::abort();
    if (t.nbytes != size_t(t.numel()) * t.elem_size) std::abort();
    try {
      if (t.to_f32().size() != size_t(t.numel()) || t.to_f64().size() != size_t(t.numel())) std::abort();
    } catch (const sparq::Error&) {
      // dtypes other than the float ones are refused when read
    }
  }
  return 0;
}
