// Attention settings: their text form, their rules (SparQ's r, k and l at a
// cache length, the baselines' budgets) and the bytes a decode step reads.
#include <algorithm>
#include <charconv>
#include <string_view>

#include "sparq/kernels/attention.h"

namespace sparq {
namespace {

struct MethodName {
  Method method;
  std::string_view name;
};
constexpr MethodName kMethods[] = {
    {Method::sparq, "sparq"}, {Method::window, "window"}, {Method::h2o, "h2o"}, {Method::topk, "topk"}};

std::string_view method_name(Method m) {
  for (const MethodName& x : kMethods)
    if (x.method == m) return x.name;
  return "?";
}

// The settings of a method that are not SparQ's own checks.
void validate_baseline(const AttentionSettings& a) {
  const SparqSettings& s = a.sp;
  if (s.k < 0) fail("k must be >= 0 (0: from the ratio), got {}", s.k);
  if (s.ratio < 0) fail("ratio must be >= 0, got {}", s.ratio);
  if (s.k == 0 && s.ratio == 0) fail("{} needs a ratio or k", method_name(a.method));
  if (s.k_floor < 1) fail("k floor must be >= 1, got {}", s.k_floor);
  if (s.local < -1) fail("local window must be >= 0, got {}", s.local);
  if (a.base.sinks < 0) fail("window sinks must be >= 0, got {}", a.base.sinks);
  if (a.base.recent_pct < 0 || a.base.recent_pct > 100)
    fail("h2o recent share must be a percent in [0, 100], got {}", a.base.recent_pct);
}

}  // namespace

void SparqSettings::validate() const {
  if (r < 0) fail("SparQ r must be >= 0 (0: from the ratio), got {}", r);
  if (k < 0) fail("SparQ k must be >= 0 (0: from the ratio), got {}", k);
  if (local < -1) fail("SparQ local window must be >= 0 (-1: k/4), got {}", local);
  if (ratio < 0) fail("SparQ ratio must be >= 0, got {}", ratio);
  if (k_floor < 1) fail("SparQ k floor must be >= 1, got {}", k_floor);
  if (split < 1 || split > 99) fail("SparQ split must be a percent in [1, 99], got {}", split);
  if ((r == 0 || k == 0) && ratio == 0) fail("SparQ needs r and k, or a ratio to derive them from");
}

std::string AttentionSettings::describe() const {
  if (!sparq) return "dense";
  std::string s(method_name(method));
  if (sp.ratio > 0 && (sp.k == 0 || (method == Method::sparq && sp.r == 0))) s += fmt::format(" 1/{}", sp.ratio);
  if (sp.r > 0) s += fmt::format(" r={}", sp.r);
  if (sp.k > 0) s += fmt::format(" k={}", sp.k);
  if (sp.local >= 0) s += fmt::format(" l={}", sp.local);
  else if (method == Method::sparq && sp.k > 0) s += fmt::format(" l={}", sp.k / 4);
  const SparqSettings def;
  if (sp.k == 0 && sp.k_floor != def.k_floor) s += fmt::format(" floor={}", sp.k_floor);
  if (method != Method::window && method != Method::h2o) {
    if (sp.split != def.split && sp.k == 0) s += fmt::format(" split={}", sp.split);
    if (sp.group != def.group) s += sp.group == GroupRule::logit ? " group=logit" : " group=prob";
  }
  if (method == Method::window) s += fmt::format(" sinks={}", base.sinks);
  if (method == Method::h2o) s += fmt::format(" recent={}%", base.recent_pct);
  if (sp.mean_mixing) s += " mean";
  if (!sp.dense_fallback) s += " nofallback";
  if (only_layer >= 0) s += fmt::format(" layer={}", only_layer);
  if (except_layer >= 0) s += fmt::format(" except={}", except_layer);
  return s;
}

bool starts_attention_setting(const std::string& text) {
  if (text == "dense") return true;
  for (const MethodName& m : kMethods)
    if (text.compare(0, m.name.size(), m.name) == 0 &&
        (text.size() == m.name.size() || text[m.name.size()] == ':'))
      return true;
  return false;
}

AttentionSettings parse_attention_setting(const std::string& text) {
  auto bad = [&](const std::string& why) -> Error {
    return Error(fmt::format("bad attention setting '{}': {} (expected dense, sparq, sparq:N, "
                             "sparq:r=R,k=K[,l=L][,floor=F][,split=P][,group=prob|logit][,mean][,nofallback], "
                             "window:N[,sinks=S], h2o:N[,recent=P] or topk:N[,l=L][,group=prob|logit]; each [,layer=L][,except=L])",
                             text, why));
  };
  auto number = [&](std::string_view v) {
    int x = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (v.empty() || ec != std::errc() || end != v.data() + v.size())
      throw bad(fmt::format("'{}' is not an integer", v));
    return x;
  };
  AttentionSettings a;
  if (text == "dense") return a;
  const MethodName* kind = nullptr;
  for (const MethodName& m : kMethods)
    if (text.compare(0, m.name.size(), m.name) == 0) kind = &m;
  if (!kind || !starts_attention_setting(text)) throw bad("unknown kind");
  a.sparq = true;
  a.method = kind->method;
  a.sp.ratio = 8;
  if (text.size() == kind->name.size()) return a;
  const bool is_sparq = a.method == Method::sparq;
  // Which keys each method takes besides N, ratio=, k= and floor=.
  auto allowed = [&](std::string_view key) {
    if (key == "r" || key == "split" || key == "mean" || key == "nofallback") return is_sparq;
    if (key == "l" || key == "group") return is_sparq || a.method == Method::topk;
    if (key == "sinks") return a.method == Method::window;
    if (key == "recent") return a.method == Method::h2o;
    return key == "k" || key == "floor" || key == "ratio" || key == "layer" || key == "except";
  };
  std::string_view rest = std::string_view(text).substr(kind->name.size() + 1);
  bool ratio_given = false;
  for (bool more = true; more;) {
    const size_t comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    more = comma != std::string_view::npos;
    if (more) rest = rest.substr(comma + 1);
    if (item.empty()) throw bad("empty item");
    const size_t eq = item.find('=');
    const std::string_view key = item.substr(0, eq);
    if (eq == std::string_view::npos) {
      if (item == "mean" || item == "nofallback") {
        if (!allowed(item)) throw bad(fmt::format("'{}' is for sparq only", item));
        if (item == "mean") a.sp.mean_mixing = true;
        else a.sp.dense_fallback = false;
      } else {
        a.sp.ratio = number(item);
        ratio_given = true;
      }
      continue;
    }
    if (!allowed(key)) throw bad(fmt::format("unknown key '{}' for {}", key, kind->name));
    const std::string_view value = item.substr(eq + 1);
    if (key == "group") {
      if (value == "prob") a.sp.group = GroupRule::prob;
      else if (value == "logit") a.sp.group = GroupRule::logit;
      else throw bad(fmt::format("group must be prob or logit, got '{}'", value));
      continue;
    }
    const int v = number(value);
    if (key == "r") a.sp.r = v;
    else if (key == "k") a.sp.k = v;
    else if (key == "l") a.sp.local = v;
    else if (key == "floor") a.sp.k_floor = v;
    else if (key == "split") a.sp.split = v;
    else if (key == "sinks") a.base.sinks = v;
    else if (key == "recent") a.base.recent_pct = v;
    else if (key == "layer" || key == "except") {
      if (v < 0) throw bad(fmt::format("{} must be >= 0, got {}", key, v));
      (key == "layer" ? a.only_layer : a.except_layer) = v;
    }
    else {
      a.sp.ratio = v;
      ratio_given = true;
    }
  }
  // Explicit sizes without a ratio: the default ratio is not used, drop it.
  if (!ratio_given && a.sp.k > 0 && (!is_sparq || a.sp.r > 0)) a.sp.ratio = 0;
  try {
    if (is_sparq) a.sp.validate();
    else validate_baseline(a);
  } catch (const Error& e) {
    throw bad(e.what());
  }
  return a;
}

// The product rule. Explicit r and k are used as given (r capped at d, k at
// S). Otherwise, with ratio N and step 1's share P (split, percent):
// r = max(1, d P / (50 N)) and k = max(S (100 - P) / (100 N), k_floor),
// capped at S, so step 1 (S*r) plus step 3 (2*k*d) read about 1/N of the
// 2*S*d elements dense attention reads (P = 50: r = d/N, k = S/(2N)). The
// local window is l (when >= 0) or k/4, capped at k. When SparQ would read
// at least as many elements as dense attention (short caches, or r and k
// too large), dense attention runs.
SparqStep resolve_sparq(const SparqSettings& s, int S, int d) {
  s.validate();
  if (S < 1 || d < 1) fail("SparQ step needs S >= 1 and head size >= 1, got S={} d={}", S, d);
  SparqStep st;
  st.mean = s.mean_mixing;
  st.group = s.group;
  const int64_t N = s.ratio;
  st.r = s.r > 0 ? std::min(s.r, d) : int(std::max<int64_t>(1, int64_t(d) * s.split / (50 * N)));
  const int64_t k = s.k > 0 ? s.k : std::max<int64_t>(int64_t(S) * (100 - s.split) / (100 * N), s.k_floor);
  st.k = int(std::min<int64_t>(k, S));
  st.l = std::min(s.local >= 0 ? s.local : st.k / 4, st.k);
  st.dense = s.dense_fallback && int64_t(S) * st.r + 2 * int64_t(st.k) * d >= 2 * int64_t(S) * d;
  return st;
}

SparqStep resolve_topk(const SparqSettings& s, int S, int d) {
  SparqSettings k_rule = s;
  k_rule.r = 0;
  k_rule.local = 0;
  if (k_rule.ratio == 0) k_rule.ratio = 1;  // only k is used, and it is given
  SparqStep st = resolve_sparq(k_rule, S, d);
  st.r = d;
  st.l = std::min(std::max(s.local, 0), st.k);
  st.mean = false;
  st.dense = s.dense_fallback && int64_t(S) * d + 2 * int64_t(st.k) * d >= 2 * int64_t(S) * d;
  return st;
}

int baseline_budget(const SparqSettings& s, int S, int d) {
  if (S < 1 || d < 1) fail("baseline step needs S >= 1 and head size >= 1, got S={} d={}", S, d);
  if (s.k > 0) return std::min(s.k, S);
  SparqSettings rule = s;
  rule.r = 0;
  rule.local = -1;
  rule.dense_fallback = true;
  rule.mean_mixing = false;
  const SparqStep st = resolve_sparq(rule, S, d);
  if (st.dense) return S;
  const int64_t elems = int64_t(S) * st.r + 2 * int64_t(st.k) * d;
  return int(std::clamp<int64_t>(elems / (2 * int64_t(d)), 1, S));
}

// Dense reads every key and value once: the transposed keys and V rows (f32,
// bf16), or the K and V rows with their scales (q8_0), the same bytes for f32
// and bf16.
uint64_t dense_step_bytes(int S, int d, KVType t) { return 2 * uint64_t(S) * kv_row_bytes(t, d); }

uint64_t sparq_step_bytes(const SparqStep& st, int S, int d, KVType t) {
  return uint64_t(S) * (uint64_t(st.r) * kv_t_elem_bytes(t) + kv_t_scale_bytes(t)) +
         2 * uint64_t(st.k) * kv_row_bytes(t, d) +
         (st.mean ? uint64_t(d) * sizeof(float) : 0);
}

bool decode_step_dense(const AttentionSettings& a, int S, int d, bool first_step) {
  if (!a.sparq) return true;
  switch (a.method) {
    case Method::sparq: return resolve_sparq(a.sp, S, d).dense;
    case Method::topk: return resolve_topk(a.sp, S, d).dense;
    case Method::window: return baseline_budget(a.sp, S, d) >= S;
    case Method::h2o: return first_step || baseline_budget(a.sp, S, d) >= S;
  }
  return true;
}

uint64_t decode_step_bytes(const AttentionSettings& a, int S, int d, KVType t, bool first_step) {
  if (decode_step_dense(a, S, d, first_step)) return dense_step_bytes(S, d, t);
  switch (a.method) {
    case Method::sparq: return sparq_step_bytes(resolve_sparq(a.sp, S, d), S, d, t);
    case Method::topk: return sparq_step_bytes(resolve_topk(a.sp, S, d), S, d, t);
    case Method::window:
    case Method::h2o: return 2 * uint64_t(baseline_budget(a.sp, S, d)) * kv_row_bytes(t, d);
  }
  return dense_step_bytes(S, d, t);
}

}  // namespace sparq
