// The safetensors format: 8-byte little-endian header length N, N bytes of
// JSON {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then
// the data area, which the tensors must cover exactly (no holes, no overlap).
#include "sparq/io/safetensors.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "sparq/io/json_text.h"

namespace sparq {
namespace {

using nlohmann::json;

// Real headers are a few hundred kB at most; the bound keeps a corrupt length
// from turning into a huge parse.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

// Element sizes of the format's dtypes. Unknown names (and the sub-byte F4/F6
// formats, whose sizes are not whole bytes) are refused.
size_t spec_dtype_size(const std::string& s) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},      {"I8", 1},      {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"F8_E8M0", 1}, {"I16", 2},  {"U16", 2},     {"F16", 2},     {"BF16", 2},
      {"I32", 4},  {"U32", 4},     {"F32", 4},     {"I64", 8},     {"U64", 8},
      {"F64", 8},  {"C64", 8},
  };
  auto it = sizes.find(s);
  return it == sizes.end() ? 0 : it->second;
}

// True when v is a non-negative JSON integer that fits int64.
bool get_count(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return out <= uint64_t(std::numeric_limits<int64_t>::max());
  }
  if (v.is_number_integer()) {
    const int64_t s = v.get<int64_t>();
    out = uint64_t(s);
    return s >= 0;
  }
  return false;
}

TensorRef parse_entry(const std::string& what, const std::string& name, const json& e,
                      const uint8_t* area, uint64_t area_size, uint64_t& begin) {
  if (!e.is_object()) fail("{}: tensor '{}': header entry is not a JSON object", what, name);
  TensorRef t;
  t.name = name;

  auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) fail("{}: tensor '{}': missing dtype", what, name);
  t.dtype_name = dt->get<std::string>();
  t.elem_size = spec_dtype_size(t.dtype_name);
  if (t.elem_size == 0)
    fail("{}: tensor '{}': unknown dtype {}", what, name, json(t.dtype_name).dump());
  if (t.dtype_name == "BF16") t.dtype = DType::BF16;
  if (t.dtype_name == "F16") t.dtype = DType::F16;

  auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) fail("{}: tensor '{}': missing shape", what, name);
  uint64_t numel = 1;
  for (const json& d : *sh) {
    uint64_t n = 0;
    if (!get_count(d, n))
      fail("{}: tensor '{}': shape {} has an entry that is not a non-negative integer", what,
           name, sh->dump());
    if (__builtin_mul_overflow(numel, n, &numel))
      fail("{}: tensor '{}': shape {} overflows", what, name, sh->dump());
    t.shape.push_back(int64_t(n));
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(numel, uint64_t(t.elem_size), &bytes))
    fail("{}: tensor '{}': shape {} overflows", what, name, sh->dump());

  auto off = e.find("data_offsets");
  uint64_t end = 0;
  if (off == e.end() || !off->is_array() || off->size() != 2 || !get_count((*off)[0], begin) ||
      !get_count((*off)[1], end))
    fail("{}: tensor '{}': data_offsets must be two non-negative integers", what, name);
  if (begin > end) fail("{}: tensor '{}': data_offsets [{}, {}] end before they begin", what,
                        name, begin, end);
  if (end > area_size)
    fail("{}: tensor '{}': data_offsets [{}, {}] go beyond the data area ({} bytes)", what, name,
         begin, end, area_size);
  if (end - begin != bytes)
    fail("{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but {} {} needs {}", what, name,
         begin, end, end - begin, t.dtype_name, t.shape_str(), bytes);
  t.data = area + begin;
  t.nbytes = size_t(bytes);
  return t;
}

void parse_metadata(const std::string& what, const json& m,
                    std::map<std::string, std::string>* out) {
  if (!m.is_object()) fail("{}: __metadata__ is not a JSON object", what);
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string()) fail("{}: __metadata__ value of {} is not a string", what, json(k).dump());
    if (out) (*out)[k] = v.get<std::string>();
  }
}

// The tensors, sorted by offset, must tile [0, area_size) exactly.
void check_coverage(const std::string& what, const std::vector<TensorRef>& ts,
                    std::vector<uint64_t> begins, uint64_t area_size) {
  std::vector<size_t> order(ts.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return begins[a] != begins[b] ? begins[a] < begins[b] : ts[a].nbytes < ts[b].nbytes;
  });
  uint64_t cursor = 0;
  const TensorRef* prev = nullptr;
  for (size_t i : order) {
    if (begins[i] < cursor)
      fail("{}: tensors '{}' and '{}' overlap in the data area", what, prev->name, ts[i].name);
    if (begins[i] > cursor)
      fail("{}: bytes {}..{} of the data area belong to no tensor (gap before '{}')", what,
           cursor, begins[i], ts[i].name);
    cursor += ts[i].nbytes;
    prev = &ts[i];
  }
  if (cursor != area_size)
    fail("{}: bytes {}..{} of the data area belong to no tensor (after the last one)", what,
         cursor, area_size);
}

// Mapped files, for the SIGBUS handler: a read past the end of a file that
// shrank after it was mapped faults, and the handler names the file.
struct Mapping {
  const uint8_t* begin = nullptr;
  size_t size = 0;
  const char* path = nullptr;  // null: free slot
};
std::array<Mapping, 64> g_mappings;  // more files than this just go unnamed
std::mutex g_mappings_mutex;

void write_all(const char* s) { [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, s, std::strlen(s)); }

void on_sigbus(int sig, siginfo_t* info, void*) {
  const auto* a = static_cast<const uint8_t*>(info->si_addr);
  for (const Mapping& m : g_mappings)
    if (m.path && a >= m.begin && a < m.begin + m.size) {
      write_all("error: ");  // only async-signal-safe calls here
      write_all(m.path);
      write_all(": the file shrank or changed while it was being read\n");
      ::_exit(1);
    }
  ::signal(sig, SIG_DFL);  // not ours: the fault repeats and ends the process as usual
}

void register_mapping(const void* begin, size_t size, const std::string& path) {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
  });
  const std::lock_guard<std::mutex> lock(g_mappings_mutex);
  for (Mapping& m : g_mappings)
    if (!m.path) {
      m.begin = static_cast<const uint8_t*>(begin);
      m.size = size;
      m.path = path.c_str();
      return;
    }
}

void unregister_mapping(const void* begin) {
  const std::lock_guard<std::mutex> lock(g_mappings_mutex);
  for (Mapping& m : g_mappings)
    if (m.path && m.begin == begin) m.path = nullptr;
}

template <class Out>
std::vector<Out> convert(const TensorRef& t) {
  const size_t n = size_t(t.numel());
  std::vector<Out> out(n);
  const auto* p = static_cast<const uint8_t*>(t.data);
  if (t.dtype_name == "F64") {
    for (size_t i = 0; i < n; ++i) {
      double v;
      std::memcpy(&v, p + 8 * i, 8);
      out[i] = Out(v);
    }
  } else if (t.dtype_name == "F32") {
    for (size_t i = 0; i < n; ++i) {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      out[i] = Out(v);
    }
  } else if (t.dtype_name == "BF16" || t.dtype_name == "F16") {
    const bool bf = t.dtype_name == "BF16";
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = Out(bf ? bf16_to_f32(h) : f16_to_f32(h));
    }
  } else {
    fail("tensor '{}' has dtype {}; only F64, F32, F16 and BF16 tensors can be read", t.name,
         t.dtype_name);
  }
  return out;
}

}  // namespace

int64_t TensorRef::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorRef::shape_str() const { return fmt::format("[{}]", fmt::join(shape, ", ")); }

bool TensorRef::is_weight_type() const {
  return dtype_name == "F32" || dtype_name == "BF16" || dtype_name == "F16";
}

std::vector<float> TensorRef::to_f32() const { return convert<float>(*this); }
std::vector<double> TensorRef::to_f64() const { return convert<double>(*this); }

std::vector<TensorRef> SafetensorsFile::parse(const uint8_t* data, size_t size,
                                              const std::string& what,
                                              std::map<std::string, std::string>* metadata) {
  if (size == 0) fail("{}: file is empty", what);
  if (size < 8) fail("{}: file is {} bytes, too short for a safetensors header", what, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeaderBytes)
    fail("{}: header length {} exceeds the {} MB limit", what, n, kMaxHeaderBytes >> 20);
  if (n > size - 8) fail("{}: header length {} exceeds file size {}", what, n, size);

  // Duplicate names would silently collapse in the parsed object: refuse them.
  std::set<std::string> names;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (depth == 1 && ev == json::parse_event_t::key && !names.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
    return true;
  };
  const char* text = reinterpret_cast<const char*>(data + 8);
  json h;
  try {
    h = parse_json({text, size_t(n)}, on_event);
  } catch (const Error& e) {
    fail("{}: header of {} bytes is {}", what, n, e.what());
  }
  if (!h.is_object()) fail("{}: header is not a JSON object", what);
  if (!duplicate.empty()) fail("{}: header names {} twice", what, json(duplicate).dump());

  const uint8_t* area = data + 8 + n;
  const uint64_t area_size = size - 8 - n;
  std::vector<TensorRef> out;
  std::vector<uint64_t> begins;
  for (const auto& [name, entry] : h.items()) {
    if (name == "__metadata__") {
      parse_metadata(what, entry, metadata);
      continue;
    }
    // Names are printed in messages, which must stay one line.
    if (std::any_of(name.begin(), name.end(), [](char ch) { return uint8_t(ch) < 0x20; }))
      fail("{}: tensor name {} contains control characters", what, json(name).dump());
    uint64_t begin = 0;
    out.push_back(parse_entry(what, name, entry, area, area_size, begin));
    begins.push_back(begin);
  }
  check_coverage(what, out, std::move(begins), area_size);
  return out;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open ({})", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  map_size_ = size_t(st.st_size);
  mtime_ = st.st_mtim;
  if (map_size_ == 0) {
    ::close(fd);
    fail("{}: file is empty", path);
  }
  void* m = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (m == MAP_FAILED) fail("{}: cannot map ({})", path, std::strerror(err));
  map_ = m;
  register_mapping(map_, map_size_, path_);
  try {
    tensors_ = parse(static_cast<const uint8_t*>(map_), map_size_, path, &metadata_);
  } catch (...) {
    unregister_mapping(map_);
    ::munmap(map_, map_size_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  unregister_mapping(map_);
  ::munmap(map_, map_size_);
}

void SafetensorsFile::check_unchanged() const {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0 || size_t(st.st_size) != map_size_ || st.st_mtim.tv_sec != mtime_.tv_sec ||
      st.st_mtim.tv_nsec != mtime_.tv_nsec)
    fail("{}: the file changed while it was being read", path_);
}

const TensorRef* SafetensorsFile::find(const std::string& name) const {
  for (const TensorRef& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorRef& SafetensorsFile::at(const std::string& name) const {
  const TensorRef* t = find(name);
  if (!t) fail("{}: missing tensor '{}'", path_, name);
  return *t;
}

WeightStore::WeightStore(const std::vector<std::string>& files) {
  if (files.empty()) fail("no .safetensors files given for the model weights");
  for (const std::string& f : files) {
    files_.push_back(std::make_unique<SafetensorsFile>(f));
    for (const TensorRef& t : files_.back()->tensors()) {
      auto [it, fresh] = index_.emplace(t.name, &t);
      if (!fresh) {
        const SafetensorsFile* other = nullptr;
        for (const auto& sf : files_)
          if (sf->find(t.name) == it->second) other = sf.get();
        fail("tensor '{}' is in both {} and {}", t.name, other->path(), f);
      }
    }
  }
}

bool WeightStore::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorRef& WeightStore::get(const std::string& name,
                                  const std::vector<int64_t>& shape) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("missing tensor '{}' in the model weights", name);
  const TensorRef& t = *it->second;
  if (t.shape != shape)
    fail("tensor '{}' has shape {}, expected [{}]", name, t.shape_str(), fmt::join(shape, ", "));
  if (!t.is_weight_type())
    fail("tensor '{}' has dtype {}; model weights must be F32, BF16 or F16", name, t.dtype_name);
  return t;
}

namespace {

// Weights are read once, at load: drop the file pages just read, so that
// peak memory is the converted weights, not those plus the whole file.
void drop_file_pages(const TensorRef& t) {
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(t.data) + page - 1) / page * page;
  const uintptr_t e = (reinterpret_cast<uintptr_t>(t.data) + t.nbytes) / page * page;
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);  // advice: failure is harmless
}

}  // namespace

std::vector<float> WeightStore::get_f32(const std::string& name,
                                        const std::vector<int64_t>& shape) const {
  const TensorRef& t = get(name, shape);
  std::vector<float> out = t.to_f32();
  drop_file_pages(t);
  return out;
}

WeightStore::Data WeightStore::get_data(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorRef& t = get(name, shape);
  Data out;
  if (t.dtype == DType::F16) {
    const std::vector<float> f = t.to_f32();
    out.bytes.resize(f.size() * sizeof(float));
    std::memcpy(out.bytes.data(), f.data(), out.bytes.size());
  } else {
    out.type = t.dtype;
    out.bytes.resize(t.nbytes);
    std::memcpy(out.bytes.data(), t.data, t.nbytes);
  }
  drop_file_pages(t);
  return out;
}

void WeightStore::check_unchanged() const {
  for (const auto& f : files_) f->check_unchanged();
}

size_t WeightStore::file_bytes() const {
  size_t b = 0;
  for (const auto& f : files_) b += f->size();
  return b;
}

}  // namespace sparq
