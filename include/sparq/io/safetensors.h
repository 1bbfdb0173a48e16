// safetensors files, mmap'ed and validated, and the set of them that makes a
// model (one file, or shards listed by model.safetensors.index.json).
#pragma once
#include <ctime>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sparq/util/common.h"

namespace sparq {

struct TensorRef {
  std::string name;
  // The header's dtype string ("BF16", "F64", "I64", ...). Every dtype of the
  // format is accepted when opening a file; only the float ones can be read.
  std::string dtype_name;
  size_t elem_size = 0;
  // Meaningful only when is_weight_type(): F32, BF16 or F16.
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  // Inside the mapping, valid while the file lives. Not necessarily aligned to
  // elem_size (the format does not require it): read through memcpy.
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  std::string shape_str() const;  // "[8192, 512]"
  bool is_weight_type() const;    // F32, BF16 or F16
  // Row-major copies converted from F64, F32, F16 or BF16; any other dtype
  // throws an Error naming the tensor and its dtype.
  std::vector<float> to_f32() const;
  std::vector<double> to_f64() const;
};

class SafetensorsFile {
 public:
  // Maps and validates the whole file: header length, JSON, dtypes, shapes,
  // offsets contiguous, inside the file and matching numel * dtype size.
  // Throws Error naming the file and the problem. While the object lives, a
  // read past the end of the file after it shrank (SIGBUS) ends the process
  // with one line "error: PATH: ..." and exit status 1 instead of a crash.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Validates a header given as bytes (the whole file image); used by the
  // mapping constructor and by fuzzing. `what` names the file in messages.
  static std::vector<TensorRef> parse(const uint8_t* data, size_t size, const std::string& what,
                                      std::map<std::string, std::string>* metadata = nullptr);

  const std::string& path() const { return path_; }
  size_t size() const { return map_size_; }
  const std::vector<TensorRef>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorRef* find(const std::string& name) const;
  // find() or throws "PATH: missing tensor NAME".
  const TensorRef& at(const std::string& name) const;
  // Throws Error when the file's size or modification time changed since it
  // was opened (tensors read since then may mix old and new bytes).
  void check_unchanged() const;

 private:
  std::string path_;
  struct timespec mtime_ {};
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorRef> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model, over one or several files.
class WeightStore {
 public:
  // files: every .safetensors file of the model (see resolve_model_files).
  // Throws when a tensor name appears in two files.
  explicit WeightStore(const std::vector<std::string>& files);

  bool has(const std::string& name) const;
  // The tensor, checked to have this shape and a weight dtype (F32, BF16,
  // F16); throws "missing tensor X" or "tensor X has shape [..], expected [..]".
  const TensorRef& get(const std::string& name, const std::vector<int64_t>& shape) const;
  // The tensor converted to f32 (row-major, same shape).
  std::vector<float> get_f32(const std::string& name, const std::vector<int64_t>& shape) const;
  // The tensor's bytes, row-major: as stored for F32 and BF16, F16 widened to
  // F32. Bf16 weights thus reach the matmuls without an f32 copy (4x their size).
  struct Data {
    DType type = DType::F32;  // F32 or BF16
    std::vector<uint8_t> bytes;
  };
  Data get_data(const std::string& name, const std::vector<int64_t>& shape) const;
  size_t file_bytes() const;
  // check_unchanged() of every file: call when done reading the tensors.
  void check_unchanged() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorRef*> index_;
};

}  // namespace sparq
